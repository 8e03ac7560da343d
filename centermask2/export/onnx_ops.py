"""ONNX lowerings of the model's named ops (default ONNX domain only).

Used as ``custom_translation_table`` of PyTorch's ONNX exporter (``torch.onnx.export(...,
dynamo=True)``). Each function receives the op's inputs as ONNX values and emits standard
operators. Both RoIAlign flavours lower to ``RoiAlign`` (opset >= 16): detectron2's
``ROIAlignV2`` (aligned=True) with ``coordinate_transformation_mode="half_pixel"``, its
``ROIAlign`` (aligned=False) with ``"output_half_pixel"``.
"""

from __future__ import annotations

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


def multilevel_roi_align_onnx(
    features: Sequence[Any],
    rois: Any,
    levels: Any,
    output_size: int,
    scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
) -> Any:
    """One ``RoiAlign`` per level on every box, merged with ``Where`` on the level index.

    ``RoiAlign`` (opset >= 16) with ``coordinate_transformation_mode="half_pixel"`` is
    detectron2's ``ROIAlignV2`` (aligned=True: -0.5 shift, no size clamp); with
    ``"output_half_pixel"`` it is detectron2's ``ROIAlign`` (aligned=False: no shift, box
    width and height clamped to at least one feature pixel, like the reference
    :func:`~centermask2.modeling.ops.roi_align.roi_align`). ``sampling_ratio=0`` is the same
    adaptive rule in both.
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
    out = None
    for level, (feature, scale) in enumerate(zip(features, scales)):
        pooled = op.RoiAlign(
            feature,
            boxes,
            batch_index,
            coordinate_transformation_mode=mode,
            mode="avg",
            output_height=int(output_size),
            output_width=int(output_size),
            sampling_ratio=int(sampling_ratio),
            spatial_scale=float(scale),
        )
        if out is None:
            out = pooled
        else:
            on_level = op.Unsqueeze(op.Equal(levels, op.Constant(value_int=level)), op.Constant(value_ints=[1, 2, 3]))
            out = op.Where(on_level, pooled, out)
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
