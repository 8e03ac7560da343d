"""ONNX lowerings of the model's named ops (default ONNX domain only).

Used as ``custom_translation_table`` of PyTorch's ONNX exporter (``torch.onnx.export(...,
dynamo=True)``). Each function receives the op's inputs as ONNX values and emits standard
operators. Both RoIAlign flavours lower to ``RoiAlign`` (opset >= 16): detectron2's
``ROIAlignV2`` (aligned=True) with ``coordinate_transformation_mode="half_pixel"``, its
``ROIAlign`` (aligned=False) with ``"output_half_pixel"``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from onnxscript import opset18 as op
from onnxscript import opset19

from ..modeling.ops import registry  # noqa: F401  (registers the torch.library ops)

__all__ = ["translation_table"]

_BOOL = 9  # onnx.TensorProto.BOOL
_INT64 = 7  # onnx.TensorProto.INT64


def padded_batched_nms_onnx(boxes: Any, scores: Any, classes: Any, valid: Any, iou_threshold: float, num_classes: int) -> Any:
    """``NonMaxSuppression`` with one ONNX "class" per model class.

    Scores become ``[B, num_classes, N]`` holding each candidate's score in its own class row
    and -1 elsewhere; a score threshold of -0.5 keeps exactly the valid candidates of each
    class, so suppression happens only within an image and class, on the original
    coordinates (no offset trick). Selected ``(batch, box)`` pairs are scattered into a
    ``[B, N]`` boolean mask.
    """
    class_ids = op.Range(op.Constant(value_int=0), op.Constant(value_int=num_classes), op.Constant(value_int=1))
    member = op.And(
        op.Equal(op.Unsqueeze(classes, op.Constant(value_ints=[1])), op.Unsqueeze(class_ids, op.Constant(value_ints=[0, 2]))),
        op.Unsqueeze(valid, op.Constant(value_ints=[1])),
    )
    class_scores = op.Where(member, op.Unsqueeze(scores, op.Constant(value_ints=[1])), op.CastLike(op.Constant(value_float=-1.0), scores))
    max_per_class = op.Shape(scores, start=1, end=2)
    selected = op.NonMaxSuppression(
        boxes,
        class_scores,
        max_per_class,
        op.Constant(value_floats=[float(iou_threshold)]),
        op.Constant(value_floats=[-0.5]),
    )
    batch_box = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)
    updates = op.Expand(op.Constant(value_ints=[1]), op.Shape(selected, start=0, end=1))
    zeros = op.Mul(op.Cast(valid, to=_INT64), op.Constant(value_int=0))
    return op.Cast(op.ScatterND(zeros, batch_box, updates), to=_BOOL)


def _dim(x: Any, axis: int) -> Any:
    """Size of ``x`` along ``axis`` as an int64 scalar."""
    return op.Squeeze(op.Shape(x, start=axis, end=axis + 1), op.Constant(value_ints=[0]))


def _shift_rows_down(x: Any, shift: Any) -> Any:
    """Per image ``b``, move the rows of ``x`` (Tensor[B, C, H, W]) down by ``shift[b]`` (Tensor[B]
    int64, >= 0) and repeat the first row once above them; rows further up become 0.

    One ``Gather`` on the ``[B * C * H, W]`` view (no transpose): output row ``y`` of image ``b``
    reads row ``max(y - shift[b], 0)``, kept where ``y >= shift[b] - 1``.
    """
    b, c, h = _dim(x, 0), _dim(x, 1), _dim(x, 2)
    zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
    rows = op.Range(zero, h, one)  # [H]
    source = op.Sub(op.Unsqueeze(rows, op.Constant(value_ints=[0])), op.Unsqueeze(shift, op.Constant(value_ints=[1])))
    keep = op.GreaterOrEqual(source, op.Constant(value_int=-1))  # [B, H]
    source = op.Max(source, zero)
    image_base = op.Mul(op.Range(zero, b, one), op.Mul(c, h))  # [B]
    channel_base = op.Mul(op.Range(zero, c, one), h)  # [C]
    index = op.Add(
        op.Add(op.Unsqueeze(image_base, op.Constant(value_ints=[1, 2])), op.Unsqueeze(channel_base, op.Constant(value_ints=[0, 2]))),
        op.Unsqueeze(source, op.Constant(value_ints=[1])),
    )  # [B, C, H]
    flat = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]), op.Shape(x, start=3, end=4), axis=0))
    moved = op.Reshape(op.Gather(flat, op.Reshape(index, op.Constant(value_ints=[-1])), axis=0), op.Shape(x))
    return op.Mul(moved, op.CastLike(op.Unsqueeze(keep, op.Constant(value_ints=[1, 3])), x))


def _shifted_index(size: Any, shift: Any) -> tuple[Any, Any]:
    """For one image: the source index of every position along an axis of length ``size`` moved
    by ``shift`` (int64 scalars), with the first element repeated once before it, and the 0/1
    keep flags (Tensor[size] each)."""
    zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
    source = op.Sub(op.Range(zero, size, one), shift)
    return op.Max(source, zero), op.GreaterOrEqual(source, op.Constant(value_int=-1))


def _is_batch_of_one(x: Any) -> bool:
    """Whether ``x``'s first dimension is statically 1 (a batch-1 static export). A symbolic
    dimension (a dynamic export's ``SymbolicDim``, a ``torch.SymInt``) is not: it is never
    converted with ``int()``, which it does not support (Python warns, then fails)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) == 0:
        return False
    dim = shape[0]
    return isinstance(dim, numbers.Integral) and not isinstance(dim, bool) and int(dim) == 1


def _region_roi_align(
    feature: Any, boxes: Any, batch_index: Any, region: Any, scale: float, output_size: int,
    sampling_ratio: int, aligned: bool,
) -> Any:
    """``RoiAlign`` of every box on one level as if each image's map ended at its region.

    ``RoiAlign`` applies its border rules (a sample in the last row/column is clamped into it, one
    beyond is 0) at the tensor's edge. Upstream's tensor ends at the region, which lies inside
    ours, so the rules must hold at the region's bottom/right edge (the top/left edges coincide).
    Four maps do it exactly: the map as is (right for samples above the region's last row and
    left of its last column), and copies with each image's region moved to the bottom and/or the
    right edge of the tensor (right for samples below the region's top / right of its left edge,
    the first row/column repeated once outside). Columns are moved on the transposed map, pooled
    with transposed boxes. Each output bin takes the copy that is exact for it: a moved copy where
    the bin reaches past the region's last row (column). That is exact unless a bin is taller
    (wider) than the region, which needs a box far larger than the image. A static batch of one
    moves rows and columns with plain ``Gather``s; other batches move each image's rows with one
    ``Gather`` on the ``[B * C * H, W]`` view, and columns the same way on the transposed map.

    Args:
        feature (Tensor[B, C, H, W]); boxes (Tensor[M, 4] xyxy, input pixels); batch_index
        (Tensor[M] int64); region (Tensor[B, 2] int64): valid (h, w) of each image's map.
    """
    mode = "half_pixel" if aligned else "output_half_pixel"
    stride = 1.0 / float(scale)
    region_h = op.Squeeze(op.Slice(region, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1])), op.Constant(value_ints=[1]))
    region_w = op.Squeeze(op.Slice(region, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]), op.Constant(value_ints=[1])), op.Constant(value_ints=[1]))
    shift_y = op.Sub(_dim(feature, 2), region_h)  # [B]
    shift_x = op.Sub(_dim(feature, 3), region_w)

    def column(i: int) -> Any:
        return op.Squeeze(op.Slice(boxes, op.Constant(value_ints=[i]), op.Constant(value_ints=[i + 1]), op.Constant(value_ints=[1])), op.Constant(value_ints=[1]))

    x1, y1, x2, y2 = (column(i) for i in range(4))
    # shifts in input pixels, per box (exact: integers times a power of two)
    dy = op.Mul(op.CastLike(op.Gather(shift_y, batch_index, axis=0), boxes), op.CastLike(op.Constant(value_float=stride), boxes))
    dx = op.Mul(op.CastLike(op.Gather(shift_x, batch_index, axis=0), boxes), op.CastLike(op.Constant(value_float=stride), boxes))

    def stack(*cols: Any) -> Any:
        return op.Concat(*(op.Unsqueeze(c, op.Constant(value_ints=[1])) for c in cols), axis=1)

    def pool(fmap: Any, rois: Any) -> Any:
        return op.RoiAlign(
            fmap, rois, batch_index, coordinate_transformation_mode=mode, mode="avg",
            output_height=int(output_size), output_width=int(output_size),
            sampling_ratio=int(sampling_ratio), spatial_scale=float(scale),
        )

    def untranspose(x: Any) -> Any:
        return op.Transpose(x, perm=[0, 1, 3, 2])

    y1s, y2s, x1s, x2s = op.Add(y1, dy), op.Add(y2, dy), op.Add(x1, dx), op.Add(x2, dx)
    plain = pool(feature, boxes)
    if _is_batch_of_one(feature):
        # one shift per axis for the whole batch: plain Gathers along H and W, no transposes
        first = op.Constant(value_ints=[0])
        rows, keep_rows = _shifted_index(_dim(feature, 2), op.Squeeze(op.Gather(shift_y, first, axis=0), first))
        cols, keep_cols = _shifted_index(_dim(feature, 3), op.Squeeze(op.Gather(shift_x, first, axis=0), first))
        keep_rows = op.CastLike(op.Unsqueeze(keep_rows, op.Constant(value_ints=[0, 1, 3])), feature)
        keep_cols = op.CastLike(op.Unsqueeze(keep_cols, op.Constant(value_ints=[0, 1, 2])), feature)
        moved_y = op.Mul(op.Gather(feature, rows, axis=2), keep_rows)
        moved_x = op.Mul(op.Gather(feature, cols, axis=3), keep_cols)
        moved_xy = op.Mul(op.Gather(moved_y, cols, axis=3), keep_cols)
        down = pool(moved_y, stack(x1, y1s, x2, y2s))
        right = pool(moved_x, stack(x1s, y1, x2s, y2))
        both = pool(moved_xy, stack(x1s, y1s, x2s, y2s))
    else:
        moved_y = _shift_rows_down(feature, shift_y)
        moved_x_t = _shift_rows_down(op.Transpose(feature, perm=[0, 1, 3, 2]), shift_x)
        moved_xy_t = _shift_rows_down(op.Transpose(moved_y, perm=[0, 1, 3, 2]), shift_x)
        down = pool(moved_y, stack(x1, y1s, x2, y2s))
        right = untranspose(pool(moved_x_t, stack(y1, x1s, y2, x2s)))
        both = untranspose(pool(moved_xy_t, stack(y1s, x1s, y2s, x2s)))

    def reaches_past_edge(lo: Any, hi: Any, size: Any) -> Any:
        """[M, R] bool: bin ``i`` ends beyond the region's last row/column (``size - 1``)."""
        offset = op.CastLike(op.Constant(value_float=0.5 if aligned else 0.0), boxes)
        start = op.Sub(op.Mul(lo, op.CastLike(op.Constant(value_float=float(scale)), boxes)), offset)
        length = op.Sub(op.Sub(op.Mul(hi, op.CastLike(op.Constant(value_float=float(scale)), boxes)), offset), start)
        if not aligned:
            length = op.Max(length, op.CastLike(op.Constant(value_float=1.0), boxes))
        bins = op.CastLike(op.Range(op.Constant(value_int=1), op.Constant(value_int=int(output_size) + 1), op.Constant(value_int=1)), boxes)
        bin_size = op.Div(length, op.CastLike(op.Constant(value_float=float(output_size)), boxes))
        end = op.Add(op.Unsqueeze(start, op.Constant(value_ints=[1])), op.Mul(op.Unsqueeze(bin_size, op.Constant(value_ints=[1])), bins))
        last = op.CastLike(op.Sub(op.Gather(size, batch_index, axis=0), op.Constant(value_int=1)), boxes)
        return op.Greater(end, op.Unsqueeze(last, op.Constant(value_ints=[1])))

    past_y = op.Unsqueeze(reaches_past_edge(y1, y2, region_h), op.Constant(value_ints=[1, 3]))  # [M, 1, R, 1]
    past_x = op.Unsqueeze(reaches_past_edge(x1, x2, region_w), op.Constant(value_ints=[1, 2]))  # [M, 1, 1, R]
    return op.Where(past_y, op.Where(past_x, both, down), op.Where(past_x, right, plain))


def multilevel_roi_align_onnx(
    features: Sequence[Any],
    rois: Any,
    levels: Any,
    output_size: int,
    scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
    regions: Any = None,
) -> Any:
    """Per level, one ``RoiAlign`` of that level's boxes only, scattered into their rows.

    ``RoiAlign`` (opset >= 16) with ``coordinate_transformation_mode="half_pixel"`` is
    detectron2's ``ROIAlignV2`` (aligned=True: -0.5 shift, no size clamp); with
    ``"output_half_pixel"`` it is detectron2's ``ROIAlign`` (aligned=False: no shift, box
    width and height clamped to at least one feature pixel, like the reference
    :func:`~centermask2.modeling.ops.roi_align.roi_align`). ``sampling_ratio=0`` is the same
    adaptive rule in both. With ``regions`` each level is pooled by :func:`_region_roi_align`.

    Each box is pooled on its own level alone (``NonZero`` / ``Gather`` of the level's rows, then
    ``ScatterND``): RoIAlign's cost is per pooled box, so pooling every box on every level (and, with
    ``regions``, on four copies of each) would do the work once per level.
    """
    mode = "half_pixel" if aligned else "output_half_pixel"
    boxes = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[5]), op.Constant(value_ints=[1]))
    batch_index = op.Cast(
        op.Squeeze(
            op.Slice(rois, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1])),
            op.Constant(value_ints=[1]),
        ),
        to=_INT64,
    )
    shape = op.Concat(op.Shape(boxes, start=0, end=1), op.Shape(features[0], start=1, end=2),
                      op.Constant(value_ints=[int(output_size), int(output_size)]), axis=0)
    out = op.CastLike(op.ConstantOfShape(shape), features[0])  # [M, C, R, R] zeros
    for level, (feature, scale) in enumerate(zip(features, scales)):
        rows = op.Squeeze(op.NonZero(op.Equal(levels, op.Constant(value_int=level))), op.Constant(value_ints=[0]))
        level_boxes = op.Gather(boxes, rows, axis=0)  # this level's boxes, [m, 4]
        level_batch = op.Gather(batch_index, rows, axis=0)
        if regions is None:
            pooled = op.RoiAlign(
                feature,
                level_boxes,
                level_batch,
                coordinate_transformation_mode=mode,
                mode="avg",
                output_height=int(output_size),
                output_width=int(output_size),
                sampling_ratio=int(sampling_ratio),
                spatial_scale=float(scale),
            )
        else:
            region = op.Gather(regions, op.Constant(value_int=level), axis=0)
            pooled = _region_roi_align(feature, level_boxes, level_batch, region, scale, output_size, sampling_ratio,
                                       aligned)
        out = op.ScatterND(out, op.Unsqueeze(rows, op.Constant(value_ints=[1])), pooled)  # indices [m, 1]
    return out


def deform_conv2d_onnx(
    input: Any,
    offset: Any,
    mask: Any,
    weight: Any,
    bias: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    offset_groups: int,
) -> Any:
    """ONNX ``DeformConv`` (opset 19): the same offset layout ((dy, dx) per tap, groups outermost),
    the same bilinear sampling with corners outside the map counting as 0, and ``mask`` as the
    optional modulation input (absent for DCNv1)."""
    return opset19.DeformConv(
        input,
        weight,
        offset,
        bias,
        mask,
        dilations=[int(d) for d in dilation],
        group=int(groups),
        offset_group=int(offset_groups),
        pads=[int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])],
        strides=[int(v) for v in stride],
    )


def translation_table() -> dict[Callable, Callable]:
    """``{torch op overload: ONNX lowering}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    return {
        torch.ops.centermask2.padded_batched_nms.default: padded_batched_nms_onnx,
        torch.ops.centermask2.multilevel_roi_align.default: multilevel_roi_align_onnx,
        torch.ops.centermask2.deform_conv2d.default: deform_conv2d_onnx,
    }
