"""The model's data-dependent steps as named ``torch.library`` ops with fixed-shape interfaces.

Each op's eager implementation is the plain-PyTorch reference in this package; exporters see
an opaque node with a known output shape and lower it (``centermask2/export/onnx_ops.py``
maps them to ONNX ``NonMaxSuppression``, ``RoiAlign`` and ``DeformConv``). Model code calls
these ops and never asks whether it is being exported.

* ``centermask2::padded_batched_nms`` — class-aware NMS per image on padded candidates.
* ``centermask2::multilevel_roi_align`` — RoIAlign of every box on the level assigned to it.
* ``centermask2::deform_conv2d`` — (modulated) deformable convolution, detectron2's DCNv1/v2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .deform_conv import deform_conv2d as deform_conv2d_reference
from .nms import batched_nms
from .roi_align import roi_align

__all__ = [
    "padded_batched_nms",
    "multilevel_roi_align",
    "multilevel_roi_align_reference",
    "deform_conv2d",
    "deform_conv2d_reference",
    "requires_autograd",
]


def requires_autograd(*tensors: Tensor | None) -> bool:
    """Whether a result of these tensors must be differentiable (training).

    The named ops have no backward of their own: model code then calls the plain-PyTorch
    references directly, which autograd differentiates like any other PyTorch code. Exported and
    inference graphs never need this and keep the named ops.
    """
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@torch.library.custom_op("centermask2::padded_batched_nms", mutates_args=())
def padded_batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, valid: Tensor, iou_threshold: float, num_classes: int
) -> Tensor:
    """Greedy class-aware NMS within each image of a padded batch of candidates.

    Args:
        boxes (Tensor[B, N, 4]): xyxy.
        scores (Tensor[B, N]).
        classes (Tensor[B, N] int64): 0 <= class < num_classes.
        valid (Tensor[B, N] bool): False rows are ignored (padding, below threshold).
        iou_threshold (float): a box is dropped when IoU > threshold with a kept box of its class.
        num_classes (int): number of classes.

    Returns:
        Tensor[B, N] bool: True for kept candidates.
    """
    b, n = scores.shape
    image = torch.arange(b, device=boxes.device)[:, None].expand(b, n)
    flat = torch.nonzero(valid.reshape(-1)).flatten()
    keep = batched_nms(
        boxes.reshape(-1, 4)[flat],
        scores.reshape(-1)[flat],
        (image * num_classes + classes).reshape(-1)[flat],
        iou_threshold,
    )
    kept = torch.zeros(b * n, dtype=torch.bool, device=boxes.device)
    kept[flat[keep]] = True
    return kept.reshape(b, n)


@padded_batched_nms.register_fake
def _padded_batched_nms_fake(
    boxes: Tensor, scores: Tensor, classes: Tensor, valid: Tensor, iou_threshold: float, num_classes: int
) -> Tensor:
    return torch.empty_like(valid)


@torch.library.custom_op("centermask2::multilevel_roi_align", mutates_args=())
def multilevel_roi_align(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int,
    scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    regions: Tensor | None = None,
) -> Tensor:
    """Pool every box from its assigned pyramid level.

    Args:
        features: per level Tensor[B, C, Hl, Wl], finest first.
        rois (Tensor[M, 5]): ``(batch_index, x1, y1, x2, y2)`` in input pixels.
        levels (Tensor[M] int64): index into ``features`` for every box.
        output_size (int): pooled resolution R.
        scales: ``1 / stride`` of every level.
        sampling_ratio (int): RoIAlign samples per bin side, 0 = adaptive.
        aligned (bool): half-pixel shift (``ROIAlignV2``).
        regions (Tensor[L, B, 2] int64 or None): per level and image, the valid (h, w) of the map
            (:mod:`..layers.padding`). Each box then samples its image's map as if it ended there: the
            RoIAlign border rules (clamping into the last row/column, zero beyond) apply at the
            region's edge, not the tensor's.

    Returns:
        Tensor[M, C, R, R].
    """
    return multilevel_roi_align_reference(features, rois, levels, output_size, scales, sampling_ratio, aligned, regions)


def multilevel_roi_align_reference(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int,
    scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    regions: Tensor | None = None,
) -> Tensor:
    """Plain-PyTorch :func:`multilevel_roi_align` (same arguments), differentiable in ``features``
    (not in ``rois``: box coordinates get no gradient, as in torchvision's RoIAlign)."""
    rois = rois.detach()
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    batch = rois[:, 0].to(torch.int64)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        on_level = levels == level
        if regions is None:
            idx = torch.nonzero(on_level).flatten()
            if idx.numel():
                out[idx] = roi_align(feature, rois[idx], output_size, scale, sampling_ratio, aligned)
            continue
        for image, (h, w) in enumerate(regions[level].tolist()):
            idx = torch.nonzero(on_level & (batch == image)).flatten()
            if idx.numel():
                own = torch.cat((torch.zeros_like(rois[idx, :1]), rois[idx, 1:]), dim=1)
                out[idx] = roi_align(feature[image : image + 1, :, :h, :w], own, output_size, scale, sampling_ratio, aligned)
    return out


@multilevel_roi_align.register_fake
def _multilevel_roi_align_fake(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int,
    scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    regions: Tensor | None = None,
) -> Tensor:
    return features[0].new_empty((rois.shape[0], features[0].shape[1], output_size, output_size))


@torch.library.custom_op("centermask2::deform_conv2d", mutates_args=())
def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Deformable convolution; see :func:`centermask2.modeling.ops.deform_conv.deform_conv2d`.

    Args:
        input (Tensor[N, C_in, H, W]).
        offset (Tensor[N, 2 * offset_groups * kh * kw, H_out, W_out]): (dy, dx) per tap.
        mask (Tensor[N, offset_groups * kh * kw, H_out, W_out] or None): DCNv2 modulation.
        weight (Tensor[C_out, C_in / groups, kh, kw]), bias (Tensor[C_out] or None).
        stride, padding, dilation: (h, w) pairs.
        groups, offset_groups: convolution and deformable groups.

    Returns:
        Tensor[N, C_out, H_out, W_out].
    """
    return deform_conv2d_reference(
        input, offset, mask, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, offset_groups
    )


@deform_conv2d.register_fake
def _deform_conv2d_fake(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[-2], offset.shape[-1]))
