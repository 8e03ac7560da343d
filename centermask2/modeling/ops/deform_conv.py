"""(Modulated) deformable convolution in plain PyTorch: DCNv1 and DCNv2 as detectron2 runs them.

Eager reference for detectron2's ``DeformConv`` / ``ModulatedDeformConv`` CUDA kernels (which
have no CPU implementation). For output position (y, x), kernel tap k = i * kw + j of offset
group g, the sample point is::

    h = y * stride_h - pad_h + i * dilation_h + offset[n, g, k, 0, y, x]
    w = x * stride_w - pad_w + j * dilation_w + offset[n, g, k, 1, y, x]

(``offset`` channels hold (dy, dx) pairs per tap, tap-major within a group, groups outermost),
read bilinearly from the input with every corner outside the map counting as 0, multiplied by
``mask[n, g, k, y, x]`` (DCNv2; 1 for DCNv1), and the samples are combined with the weight as a
convolution would. These are also the semantics of ONNX ``DeformConv`` (opset 19), which the
exporter lowers this op to.

The implementation gathers the four bilinear corners of every sample for all positions at once
(no Python loop over positions or taps) and finishes with one matmul per convolution group.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["deform_conv2d"]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    offset_groups: int = 1,
) -> Tensor:
    """Deformable convolution (DCNv2 with ``mask``, DCNv1 without).

    Args:
        input (Tensor[N, C_in, H, W]): feature map.
        offset (Tensor[N, 2 * offset_groups * kh * kw, H_out, W_out]): (dy, dx) per tap.
        mask (Tensor[N, offset_groups * kh * kw, H_out, W_out] or None): modulation per tap
            (already a probability: detectron2 applies the sigmoid before the op).
        weight (Tensor[C_out, C_in / groups, kh, kw]).
        bias (Tensor[C_out] or None).
        stride, padding, dilation: as for a convolution.
        groups: convolution groups.
        offset_groups: deformable groups; channel block ``g`` of ``C_in / offset_groups`` channels
            uses offsets and mask of group ``g``.

    Returns:
        Tensor[N, C_out, H_out, W_out] in the input's dtype.
    """
    n, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    k = kh * kw
    h_out, w_out = offset.shape[-2:]
    p = h_out * w_out
    g_off = int(offset_groups)
    if c_in % g_off or c_in % groups or c_per_group * groups != c_in or c_out % groups:
        raise ValueError(
            f"deform_conv2d: {c_in} input channels do not split into offset_groups={g_off} / groups={groups} "
            f"with weight {tuple(weight.shape)}"
        )
    if offset.shape[1] != 2 * g_off * k or (mask is not None and mask.shape[1] != g_off * k):
        raise ValueError(
            f"deform_conv2d: offset {tuple(offset.shape)} / mask {None if mask is None else tuple(mask.shape)} do "
            f"not fit {g_off} offset group(s) of a {kh}x{kw} kernel"
        )
    cg = c_in // g_off
    dtype, device = input.dtype, input.device

    # sample coordinates [N, G, K, P]: base grid of each tap plus its learned offset
    off = offset.reshape(n, g_off, k, 2, p)
    ys = torch.arange(h_out, device=device, dtype=dtype) * sh - ph
    xs = torch.arange(w_out, device=device, dtype=dtype) * sw - pw
    ii = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dh  # [K]
    jj = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dw
    base_y = (ii[:, None, None] + ys[None, :, None]).expand(k, h_out, w_out).reshape(k, p)
    base_x = (jj[:, None, None] + xs[None, None, :]).expand(k, h_out, w_out).reshape(k, p)
    sy = base_y + off[:, :, :, 0]
    sx = base_x + off[:, :, :, 1]

    y0f, x0f = torch.floor(sy), torch.floor(sx)
    ly, lx = sy - y0f, sx - x0f
    y0, x0 = y0f.to(torch.int64), x0f.to(torch.int64)

    # channels last per offset group, one row per (n, g, pixel): [N * G * H * W, Cg]
    rows = input.reshape(n, g_off, cg, h * w).permute(0, 1, 3, 2).reshape(n * g_off * h * w, cg)
    row_base = (torch.arange(n * g_off, device=device) * (h * w)).reshape(n, g_off, 1, 1)
    cols = None
    for cy, cx, wy, wx in ((y0, x0, 1 - ly, 1 - lx), (y0, x0 + 1, 1 - ly, lx),
                           (y0 + 1, x0, ly, 1 - lx), (y0 + 1, x0 + 1, ly, lx)):
        inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        index = row_base + (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1))
        weight_c = torch.where(inside, wy * wx, torch.zeros((), dtype=dtype, device=device))
        sampled = rows.index_select(0, index.reshape(-1)).reshape(n, g_off, k, p, cg)
        term = sampled * weight_c[..., None]
        cols = term if cols is None else cols + term
    assert cols is not None
    if mask is not None:
        cols = cols * mask.reshape(n, g_off, k, p, 1)

    # [N, G, K, P, Cg] -> [N, P, C_in, K], C_in = (G, Cg) as the weight's input channels
    cols = cols.permute(0, 3, 1, 4, 2).reshape(n, p, groups, c_per_group * k)
    wmat = weight.reshape(groups, c_out // groups, c_per_group * k)
    out = torch.einsum("npgc,goc->ngop", cols, wmat).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.reshape(1, c_out, 1, 1)
    return out
