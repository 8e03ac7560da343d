"""RoIAlign in plain PyTorch.

This is the eager reference for the ``RoIAlign`` used by detectron2's ``ROIAlignV2`` pooler
(torchvision ``roi_align`` with ``aligned=True``). It reproduces that kernel's sampling rule:

* box corners are scaled by ``spatial_scale`` and shifted by -0.5 when ``aligned``;
* each output bin averages ``grid_h x grid_w`` bilinear samples, where the grid is
  ``sampling_ratio`` per side, or ``ceil(roi_size / output_size)`` when ``sampling_ratio <= 0``
  (the "adaptive" rule, computed per box);
* a sample more than one pixel outside the feature map contributes zero, samples inside the
  last pixel row/column are clamped to it;
* the sum is divided by ``max(grid_h * grid_w, 1)`` so an empty box yields zeros.

Bilinear sampling and the bin average are separable, so each box is pooled as two small matrix
products over the map's crop under it (``A_y @ crop @ A_x^T``), the same weights as gathering
every sample, a fraction of the work.

The same semantics are spelled ``RoiAlign(coordinate_transformation_mode="half_pixel",
mode="avg")`` in ONNX opset >= 16, which is what an exporter lowers this op to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["roi_align", "RoIAlign"]


def _axis_samples(
    start: Tensor, bin_size: Tensor, grid: int, pooled: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample positions and bilinear taps along one axis for one box.

    Args:
        start (Tensor[]): box start on the feature map (already scaled and shifted).
        bin_size (Tensor[]): size of one output bin, feature-map pixels.
        grid (int): samples per bin along this axis (>= 1).
        pooled (int): number of output bins along this axis.
        size (int): feature-map extent along this axis.

    Returns:
        low, high (Tensor[pooled * grid] int64): neighbouring pixel indices,
        w_low, w_high (Tensor[pooled * grid]): their bilinear weights,
        valid (Tensor[pooled * grid] bool): False for samples more than one pixel outside.
    """
    device = start.device
    bins = torch.arange(pooled, device=device, dtype=start.dtype)
    sub = torch.arange(grid, device=device, dtype=start.dtype) + 0.5
    pos = start + bins[:, None] * bin_size + sub[None, :] * bin_size / grid
    pos = pos.reshape(-1)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    w_high = pos - low.to(pos.dtype)
    w_low = 1.0 - w_high
    return low, high, w_low, w_high, valid


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """Pool a fixed-size feature for every box.

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        rois (Tensor[K, 5]): ``(batch_index, x1, y1, x2, y2)`` in input-image pixels.
        output_size (int or (int, int)): pooled (height, width).
        spatial_scale (float): feature-map size / input-image size, e.g. 1/8.
        sampling_ratio (int): samples per bin side; <= 0 picks ``ceil(roi_size / output_size)``
            for every box separately.
        aligned (bool): shift box corners by -0.5 pixel (detectron2 ``ROIAlignV2``).

    Returns:
        Tensor[K, C, output_h, output_w] with the dtype of ``input``.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    pooled_h, pooled_w = int(output_size[0]), int(output_size[1])
    if input.dim() != 4:
        raise ValueError(f"roi_align expects input of shape [N, C, H, W], got {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align expects rois of shape [K, 5], got {tuple(rois.shape)}")
    _, channels, height, width = input.shape
    out = input.new_zeros((rois.shape[0], channels, pooled_h, pooled_w))
    if rois.shape[0] == 0:
        return out

    offset = 0.5 if aligned else 0.0
    boxes = rois[:, 1:].to(input.dtype) * spatial_scale - offset
    starts_x, starts_y = boxes[:, 0], boxes[:, 1]
    roi_w = boxes[:, 2] - boxes[:, 0]
    roi_h = boxes[:, 3] - boxes[:, 1]
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / pooled_h
    bin_w = roi_w / pooled_w
    batch_index = rois[:, 0].to(torch.int64).tolist()
    # The per-box grid sizes are data; reading them once keeps the loop free of device syncs.
    roi_h_list, roi_w_list = roi_h.tolist(), roi_w.tolist()

    for k in range(rois.shape[0]):
        if sampling_ratio > 0:
            grid_h = grid_w = int(sampling_ratio)
        else:
            grid_h = math.ceil(roi_h_list[k] / pooled_h)
            grid_w = math.ceil(roi_w_list[k] / pooled_w)
        if grid_h <= 0 or grid_w <= 0:
            continue  # empty box: every bin is zero, as in the reference kernel
        ay, y0, y1 = _axis_matrix(starts_y[k], bin_h[k], grid_h, pooled_h, height)
        ax, x0, x1 = _axis_matrix(starts_x[k], bin_w[k], grid_w, pooled_w, width)
        # bilinear sampling and the bin average are separable: rows, then columns, of the map's
        # crop under the box (two small products instead of gathering every sample)
        crop = input[batch_index[k], :, y0:y1, x0:x1]  # [C, h, w]
        out[k] = torch.matmul(torch.matmul(ay, crop), ax.t())
    return out


def _axis_matrix(start: Tensor, bin_size: Tensor, grid: int, pooled: int, size: int) -> tuple[Tensor, int, int]:
    """One axis of a box's pooling as a matrix: ``A[bin, i]`` is the weight of map pixel ``first + i``
    in output bin ``bin`` (bilinear taps of the bin's ``grid`` samples, each divided by ``grid``);
    returns ``(A [pooled, last - first], first, last)``, the pixels the box reads."""
    low, high, w_low, w_high, valid = _axis_samples(start, bin_size, grid, pooled, size)
    first, last = int(low.min()), int(high.max()) + 1
    bins = torch.arange(pooled, device=low.device).repeat_interleave(grid)
    scale = valid.to(w_low.dtype) / float(grid)
    matrix = w_low.new_zeros((pooled, last - first))
    matrix.index_put_((bins, low - first), w_low * scale, accumulate=True)
    matrix.index_put_((bins, high - first), w_high * scale, accumulate=True)
    return matrix, first, last


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (one pyramid level)."""

    def __init__(
        self, output_size: int | tuple[int, int], *, spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        """input (Tensor[N, C, H, W]), rois (Tensor[K, 5]) -> Tensor[K, C, oh, ow]."""
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
