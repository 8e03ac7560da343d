"""Padding-invariant execution: each image computes what it would compute alone.

Upstream runs one image on a tensor padded only to a multiple of the size divisibility (32).
A static model (1344x1344) or a batch of differently sized images runs on a larger tensor, and
without care the extra padding changes the result: convolutions near the right/bottom edge read
it, GroupNorm and eSE take statistics over it, FCOS finds candidates in it and RoIAlign samples
it. A :class:`ValidRegion` holds, per image, the size of the tensor upstream would have at one
point of the network, and the helpers below make every layer behave as if the tensor ended
there:

* before any layer with a spatial footprint (kernel > 1 or padding > 0) values outside the
  region are replaced by the layer's own border value: 0 for convolutions (including deformable
  ones, whose out-of-map samples count as 0), -inf for max pooling;
* GroupNorm and eSE's global average take their statistics over the region only;
* the region of a layer's output follows from the layer's own size arithmetic
  (:meth:`ValidRegion.after`), e.g. ``floor((h + 2p - d(k-1) - 1) / s) + 1`` for a convolution and
  the ceil-mode rule of VoVNet's pooling, never ``h / stride``.

Values outside a region are left as (finite) garbage between layers, cheaper than re-zeroing
after every bias; everything that reads them masks first (a multiplication by a 0/1 mask, exact
for finite values; max pooling's fill is cleared right after the pooling). Pointwise layers (BN, ReLU, 1x1 stride-1
convolutions) need nothing.

Every function takes ``region=None`` to mean "no padding to ignore" and then runs the plain
layer, so model code has one forward for both modes.

The network's input starts that way too: :func:`normalize` turns raw pixels into
``(x - mean) / std`` inside each image and zeros in the padding, with :meth:`ValidRegion.inside`
as its inside-test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import UnsupportedError

__all__ = ["ValidRegion", "run_layer", "run", "run_with_region", "output_region", "max_pool2d", "normalize"]


def _dims_key(*dims: object) -> tuple:
    """Cache key for tensor sizes; symbolic sizes (dynamic export) are not hashable, their
    expressions are."""
    return tuple(d if isinstance(d, int) else str(d) for d in dims)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


class ValidRegion:
    """Per image, the (height, width) of the tensor upstream would have at this point.

    Args:
        sizes (Tensor[B, 2] int64): valid (h, w) of every image at this resolution; the valid
            part of image ``b`` is ``[:h, :w]`` (top-left aligned, padding bottom/right).
        full_masks: apply masks in each tensor's own shape, made by a 1x1 convolution, instead of
            broadcasting a one-channel mask. The same numbers; an exported graph then multiplies
            two convolution outputs of equal shape, which ONNX Runtime does in its blocked layout
            (a broadcast costs two layout conversions per mask there), while eagerly the
            broadcast is ~10x cheaper than making the full mask.
    """

    def __init__(self, sizes: Tensor, full_masks: bool = False) -> None:
        self.sizes = sizes
        self.full_masks = full_masks
        # Many layers share a region: one mask per map size and one child region per layer
        # geometry keep eager work and exported graphs small.
        self._inside: dict[tuple[int, int], Tensor] = {}
        self._cache: dict[tuple, Any] = {}  # child regions, masks, areas

    @classmethod
    def for_input(cls, image_sizes: Tensor, size_divisibility: int, full_masks: bool = False) -> ValidRegion:
        """Region of the network input: each image's size rounded up to ``size_divisibility``,
        the padding upstream's ``ImageList.from_tensors`` gives a batch of one."""
        d = max(int(size_divisibility), 1)
        sizes = image_sizes.to(torch.int64)
        return cls(torch.div(sizes + (d - 1), d, rounding_mode="floor") * d, full_masks)

    def inside(self, height: int, width: int) -> Tensor:
        """Tensor[B, 1, height, width] bool: True inside each image's region."""
        key = _dims_key(height, width)
        if key not in self._inside:
            device = self.sizes.device
            rows = torch.arange(height, device=device)[None, :] < self.sizes[:, 0:1]  # [B, H]
            cols = torch.arange(width, device=device)[None, :] < self.sizes[:, 1:2]  # [B, W]
            self._inside[key] = (rows[:, :, None] & cols[:, None, :])[:, None]
        return self._inside[key]

    def fill_outside(self, x: Tensor, value: float = 0.0) -> Tensor:
        """``x`` (Tensor[B, C, H, W]) with every position outside the region set to ``value``
        (0 or -inf).

        0 is applied in place unless ``x`` requires grad. Both are one ``Mul`` / ``Add`` with a mask of ``x``'s own shape, exact because values
        outside are finite: 0 multiplies by the 0/1 mask; -inf adds ``finfo.min / 2`` outside,
        below any activation, which is all max pooling needs. (ONNX Runtime keeps such a
        same-shape product in its blocked convolution layout; a broadcast one would force two
        layout conversions per mask.)
        """
        c, h, w = x.shape[-3:]
        if value == 0.0:
            mask = self.mask_like(x) if self.full_masks else self.mask(h, w, x.dtype)
            if x.requires_grad:
                return x * mask
            # in place: only values outside the region change, and no reader needs them (the
            # backbones copy their input first, so a caller's tensor is never changed)
            return x.mul_(mask)
        if value == float("-inf"):
            key = ("lowest", *_dims_key(c if self.full_masks else 1, h, w), x.dtype)
            if key not in self._cache:
                lowest = (1 - self.mask(h, w, x.dtype)) * (torch.finfo(x.dtype).min / 2)
                self._cache[key] = _expand_channels(lowest, c) if self.full_masks else lowest
            return x + self._cache[key]
        raise ValueError(f"fill_outside supports 0 and -inf, got {value}")

    def mask(self, height: int, width: int, dtype: torch.dtype) -> Tensor:
        """Tensor[B, 1, height, width] of ``dtype``: 1 inside each image's region, 0 outside."""
        key = (*_dims_key(height, width), dtype)
        if key not in self._cache:
            self._cache[key] = self.inside(height, width).to(dtype)
        return self._cache[key]

    def mask_like(self, x: Tensor) -> Tensor:
        """The 0/1 mask in ``x``'s shape (Tensor[B, C, H, W]), one per shape.

        Made by a 1x1 convolution of the one-channel mask with ones, so that exported graphs
        multiply two convolution outputs of equal shape.
        """
        c, h, w = x.shape[-3:]
        key = ("full", *_dims_key(c, h, w), x.dtype)
        if key not in self._cache:
            self._cache[key] = _expand_channels(self.mask(h, w, x.dtype), c)
        return self._cache[key]

    def after(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> ValidRegion:
        """Region of the output of a convolution or pooling with these settings (PyTorch's
        output-size rules, per image)."""
        k, s, p, d = _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation)
        if s == (1, 1) and all(2 * p[a] == d[a] * (k[a] - 1) for a in (0, 1)):
            return self  # "same" padding, stride 1
        key = (k, s, p, d, bool(ceil_mode))
        if key not in self._cache:
            self._cache[key] = ValidRegion(torch.stack([
                _output_size(self.sizes[:, axis], k[axis], s[axis], p[axis], d[axis], ceil_mode) for axis in (0, 1)
            ], dim=1), self.full_masks)
        return self._cache[key]

    def area(self, dtype: torch.dtype) -> Tensor:
        """Tensor[B]: positions inside each image's region."""
        key = ("area", dtype)
        if key not in self._cache:
            self._cache[key] = (self.sizes[:, 0] * self.sizes[:, 1]).to(dtype)
        return self._cache[key]

    def mean(self, x: Tensor) -> Tensor:
        """Mean over the region: Tensor[B, C, H, W] -> Tensor[B, C, 1, 1] (eSE's average pool)."""
        count = self.area(x.dtype)[:, None, None, None]
        return self.fill_outside(x).sum(dim=(2, 3), keepdim=True) / count

    def group_norm(self, x: Tensor, norm: nn.GroupNorm) -> Tensor:
        """``norm(x)`` with the statistics of each (image, group) taken over the region only.

        One pass for the sums of ``x`` and ``x**2`` inside the region, then ``x * a + b`` with
        per-(image, channel) ``a``, ``b``: four passes over ``x`` where the textbook form needs
        eight.

        Args:
            x (Tensor[B, C, H, W]); norm: the GroupNorm layer (its groups, eps and affine).
        """
        b, c, h, w = x.shape
        g = norm.num_groups
        inside = self.fill_outside(x)
        count = (self.area(x.dtype) * (c // g))[:, None]  # [B, 1]
        total = inside.reshape(b, g, -1).sum(dim=2)  # [B, G]
        squares = (inside * inside).reshape(b, g, -1).sum(dim=2)
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=0)
        scale = torch.rsqrt(var + norm.eps)  # [B, G]
        scale = scale[:, :, None].expand(b, g, c // g).reshape(b, c)
        shift = -(mean[:, :, None].expand(b, g, c // g).reshape(b, c)) * scale
        if norm.affine:
            scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
        return x * scale[:, :, None, None] + shift[:, :, None, None]


def _expand_channels(plane: Tensor, channels: int) -> Tensor:
    """Tensor[B, 1, H, W] -> Tensor[B, channels, H, W], as a 1x1 convolution with ones (exact:
    one product by 1 per output) so that ONNX Runtime produces it in its convolution layout."""
    ones = torch.ones((channels, 1, 1, 1), dtype=plane.dtype, device=plane.device)
    return F.conv2d(plane, ones)


def _output_size(size: Tensor, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> Tensor:
    """PyTorch's output length of a convolution / pooling along one axis, per image."""
    room = size + (2 * padding - dilation * (kernel - 1) - 1)
    if not ceil_mode:
        return torch.div(room, stride, rounding_mode="floor") + 1
    out = torch.div(room + (stride - 1), stride, rounding_mode="floor") + 1
    # the last window must start inside the input or its left padding
    return torch.where((out - 1) * stride >= size + padding, out - 1, out)


# Layers that act on each position alone: nothing to do for the padding.
_POINTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Identity,
    nn.BatchNorm2d,
    nn.Sigmoid,
    nn.Hardsigmoid,
)


def _is_pointwise(module: nn.Module) -> bool:
    # our own pointwise layers (FrozenBatchNorm2d, ...) say so with a ``pointwise = True`` class
    # attribute, so that this module imports none of them
    return isinstance(module, _POINTWISE) or getattr(module, "pointwise", False)


def _reads_neighbours(kernel_size: tuple[int, int], padding: tuple[int, int]) -> bool:
    return kernel_size != (1, 1) or padding != (0, 0)


def _run_conv(conv: nn.Conv2d, x: Tensor, region: ValidRegion) -> Tensor:
    if _reads_neighbours(_pair(conv.kernel_size), _pair(conv.padding)):
        x = region.fill_outside(x, 0.0)
    norm = getattr(conv, "norm", None)
    activation: Callable[[Tensor], Tensor] | None = getattr(conv, "activation", None)
    if norm is None and activation is None:
        return conv(x)
    x = conv._conv_forward(x, conv.weight, conv.bias)
    out_region = region.after(conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    if norm is not None:
        x = run(norm, x, out_region)
    if activation is not None:
        x = activation(x)
    return x


def run_layer(module: nn.Module, x: Tensor, region: ValidRegion) -> tuple[Tensor, ValidRegion]:
    """Run one layer so that the padding outside ``region`` has no effect.

    Handles ``nn.Sequential`` (child by child), convolutions (with detectron2-style attached
    ``norm``/``activation``), max pooling, GroupNorm, pointwise layers, and any module whose
    ``forward(x, region)`` takes a region itself (it then must define ``output_region``).

    Returns:
        the output and its region.

    Raises:
        UnsupportedError: for a layer with a spatial footprint this module does not know.
    """
    if isinstance(module, nn.Sequential):
        for child in module:
            x, region = run_layer(child, x, region)
        return x, region
    if isinstance(module, nn.Conv2d):
        out = _run_conv(module, x, region)
        return out, region.after(module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.MaxPool2d):
        k, p = _pair(module.kernel_size), _pair(module.padding)
        if _reads_neighbours(k, p):
            x = region.fill_outside(x, float("-inf"))
        stride = module.stride if module.stride is not None else module.kernel_size
        out_region = region.after(k, stride, p, module.dilation, module.ceil_mode)
        return _finite_outside(module(x), out_region), out_region
    if isinstance(module, nn.GroupNorm):
        return region.group_norm(x, module), region
    if _is_pointwise(module):
        return module(x), region
    if hasattr(module, "output_region"):
        return module(x, region), module.output_region(region)
    raise UnsupportedError(
        f"{type(module).__name__} has no padding-invariant form; export with --static-padding include "
        "or pad images only to a multiple of the size divisibility"
    )


def output_region(module: nn.Module | None, region: ValidRegion | None) -> ValidRegion | None:
    """Region of ``module``'s output from its input region, by the layers' size arithmetic
    (no data is computed). None stays None; a None module keeps the region."""
    if region is None or module is None:
        return region
    if isinstance(module, nn.Sequential):
        for child in module:
            region = output_region(child, region)
        return region
    if isinstance(module, nn.Conv2d):
        return region.after(module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.MaxPool2d):
        stride = module.stride if module.stride is not None else module.kernel_size
        return region.after(module.kernel_size, stride, module.padding, module.dilation, module.ceil_mode)
    if hasattr(module, "output_region"):
        return module.output_region(region)
    return region


def run(module: nn.Module, x: Tensor, region: ValidRegion | None) -> Tensor:
    """``module(x)``, ignoring the padding outside ``region`` (plain ``module(x)`` when None)."""
    if region is None:
        return module(x)
    return run_layer(module, x, region)[0]


def run_with_region(
    module: nn.Module, x: Tensor, region: ValidRegion | None
) -> tuple[Tensor, ValidRegion | None]:
    """Like :func:`run`, also returning the output's region (None stays None)."""
    if region is None:
        return module(x), None
    return run_layer(module, x, region)


def max_pool2d(x: Tensor, region: ValidRegion | None, kernel_size: int, stride: int, padding: int) -> Tensor:
    """``F.max_pool2d`` that ignores values outside ``region``."""
    if region is None:
        return F.max_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding)
    out = F.max_pool2d(region.fill_outside(x, float("-inf")), kernel_size=kernel_size, stride=stride, padding=padding)
    return _finite_outside(out, region.after(kernel_size, stride, padding))


def _finite_outside(pooled: Tensor, region: ValidRegion) -> Tensor:
    # windows entirely outside the region pooled only the huge negative fill; clear it so that
    # no later layer can overflow it
    return region.fill_outside(pooled, 0.0)


def normalize(images: Tensor, image_sizes: Tensor, pixel_mean: Tensor, pixel_std: Tensor) -> Tensor:
    """Raw pixels to network input: ``(x - mean) / std`` inside each image, 0 in the padding.

    Args:
        images: Tensor[B, 3, H, W] raw pixel values (uint8 or float), padded bottom/right.
        image_sizes: Tensor[B, 2] int64, valid (h, w); pixels outside are padding.
        pixel_mean, pixel_std: Tensor[3, 1, 1] float32 per-channel constants.

    Returns:
        Tensor[B, 3, H, W] float32, what upstream feeds its backbone for the batch (same op order
        and dtype promotion: float32 subtract, then divide; zeros after normalization).
    """
    x = (images.to(torch.float32) - pixel_mean) / pixel_std
    h, w = images.shape[-2:]
    inside = ValidRegion(image_sizes).inside(h, w)
    return torch.where(inside, x, torch.zeros((), dtype=x.dtype, device=x.device))
