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

Since sampling and the convolution's weighted sum are both linear, the weight is applied first:
one dense matmul gives, for every input pixel, each tap's contribution to every output channel
(``Y[pixel, tap, C_out]``, the FLOPs of the plain convolution), and each output position is then
the bilinear-weighted, mask-weighted sum of 4 corners x taps x offset groups rows of ``Y`` -- one
sparse (CSR) matrix times ``Y``. No Python loop over positions or taps, no gathered
``[C_in x taps x positions]`` tensor; about 2-3x a plain convolution on a CPU.
"""

from __future__ import annotations

import warnings

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
    compute = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    device = input.device
    x = input.to(compute)

    # sample coordinates [N, G, K, P]: the regular grid of each tap plus its learned offset
    off = offset.to(compute).reshape(n, g_off, k, 2, p)
    ys = torch.arange(h_out, device=device, dtype=compute) * sh - ph
    xs = torch.arange(w_out, device=device, dtype=compute) * sw - pw
    ii = torch.arange(kh, device=device, dtype=compute).repeat_interleave(kw) * dh  # [K]
    jj = torch.arange(kw, device=device, dtype=compute).repeat(kh) * dw
    sy = (ii[:, None, None] + ys[None, :, None]).expand(k, h_out, w_out).reshape(k, p) + off[:, :, :, 0]
    sx = (jj[:, None, None] + xs[None, None, :]).expand(k, h_out, w_out).reshape(k, p) + off[:, :, :, 1]
    y0f, x0f = torch.floor(sy), torch.floor(sx)
    ly, lx = sy - y0f, sx - x0f
    y0, x0 = y0f.to(torch.int64), x0f.to(torch.int64)
    modulation = None if mask is None else mask.to(compute).reshape(n, g_off, k, p)

    # Y[n, g, pixel, tap, o] = sum over the group's input channels c of x[n, c, pixel] * weight[o, c, tap]
    full = weight.to(compute).reshape(c_out, c_per_group, k)
    if groups > 1:  # block-diagonal: output channels of conv group j read only its input channels
        dense = full.new_zeros((c_out, c_in, k))
        per_out = c_out // groups
        for j in range(groups):
            dense[j * per_out:(j + 1) * per_out, j * c_per_group:(j + 1) * c_per_group] = full[j * per_out:(j + 1) * per_out]
        full = dense
    w_taps = full.reshape(c_out, g_off, cg, k).permute(1, 2, 3, 0).reshape(g_off, cg, k * c_out)
    pixels = x.reshape(n, g_off, cg, h * w).transpose(2, 3)  # [N, G, H*W, Cg]
    y_rows = torch.matmul(pixels, w_taps).reshape(n * g_off * h * w * k, c_out)

    # one sparse row per output position: 4 corners x K taps x G groups entries into y_rows
    tap = torch.arange(k, device=device).reshape(1, 1, k, 1)
    image_group = torch.arange(n * g_off, device=device).reshape(n, g_off, 1, 1)
    columns, values = [], []
    for cy, cx, wy, wx in ((y0, x0, 1 - ly, 1 - lx), (y0, x0 + 1, 1 - ly, lx),
                           (y0 + 1, x0, ly, 1 - lx), (y0 + 1, x0 + 1, ly, lx)):
        inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        value = wy * wx if modulation is None else wy * wx * modulation
        values.append(torch.where(inside, value, torch.zeros((), dtype=compute, device=device)))
        pixel = cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)
        columns.append((image_group * (h * w) + pixel) * k + tap)
    per_row = g_off * k * 4
    order = (0, 3, 1, 2, 4)  # [N, G, K, P, corner] -> [N, P, G, K, corner]: rows are (n, p)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        sampling = torch.sparse_csr_tensor(
            torch.arange(0, n * p * per_row + 1, per_row, device=device),
            torch.stack(columns, -1).permute(order).reshape(-1),
            torch.stack(values, -1).permute(order).reshape(-1),
            (n * p, y_rows.shape[0]),
            check_invariants=False,
        )
        out = torch.sparse.mm(sampling, y_rows)  # [N * P, C_out]
    out = out.reshape(n, h_out, w_out, c_out).permute(0, 3, 1, 2)
    if bias is not None:
        out = out + bias.to(compute).reshape(1, c_out, 1, 1)
    return out.to(input.dtype).contiguous()
