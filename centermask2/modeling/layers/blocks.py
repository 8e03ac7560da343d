"""Building blocks shared by the backbones: frozen batch norm, a conv with an attached norm,
the norm factory, weight fills, and a weight-only deformable convolution.

Everything here is plain PyTorch; names of parameters and buffers follow detectron2 so that
official checkpoints load without renaming.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..ops.registry import deform_conv2d, deform_conv2d_reference, requires_autograd
from .padding import ValidRegion, run

logger = logging.getLogger(__name__)

__all__ = [
    "ShapeSpec",
    "FrozenBatchNorm2d",
    "Conv2d",
    "DeformConv2d",
    "get_norm",
    "conv3x3_norm_relu",
    "freeze_module",
    "c2_xavier_fill",
    "c2_msra_fill",
    "SUPPORTED_NORMS",
]

SUPPORTED_NORMS: tuple[str, ...] = ("", "FrozenBN", "BN", "SyncBN", "GN")


class ShapeSpec(NamedTuple):
    """Channels and stride of one feature map (the stride is relative to the input image)."""

    channels: int
    stride: int


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters.

    All four tensors are buffers (not parameters): ``weight``, ``bias``, ``running_mean`` and
    ``running_var``, each ``Tensor[C]``. The output is
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``, computed with
    ``F.batch_norm(training=False)`` which exports as a single ONNX ``BatchNormalization``.
    Freshly built, it is the identity (``running_var`` starts at ``1 - eps``, as in detectron2).
    There is no ``num_batches_tracked`` buffer.
    """

    _version = 3
    pointwise = True  # acts on each position alone (see .padding)

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        """
        Args:
            num_features: number of channels C.
            eps: added to the variance before the square root.
        """
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C, H, W]): input.

        Returns:
            Tensor[N, C, H, W]: normalized input, same dtype as ``x``.
        """
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Caffe2-converted checkpoints (no version metadata) may carry only weight and bias, with
        # the statistics already folded in; fill neutral statistics so that they load strictly.
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        # Checkpoints converted from a BatchNorm2d may still hold its step counter; it means
        # nothing here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` in ``module`` by a frozen copy.

        Args:
            module: any module.

        Returns:
            A new ``FrozenBatchNorm2d`` if ``module`` itself is a batch norm; otherwise ``module``,
            converted in place.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.data = module.weight.data.clone().detach()
                frozen.bias.data = module.bias.data.clone().detach()
            if module.running_mean is not None:
                frozen.running_mean.data = module.running_mean.data.clone().detach()
                frozen.running_var.data = module.running_var.data.clone().detach()
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def get_norm(norm: str | Callable[[int], nn.Module] | None, out_channels: int) -> nn.Module | None:
    """Build a normalization layer by name, as detectron2's ``get_norm`` does.

    Args:
        norm: one of ``""`` (none), ``"FrozenBN"``, ``"BN"``, ``"SyncBN"`` (a plain ``BatchNorm2d``
            here: identical at inference and in state-dict names), ``"GN"`` (32 groups); or a
            callable taking the channel count; or None.
        out_channels: number of channels to normalize.

    Returns:
        The layer, or None for ``""`` / None.

    Raises:
        ValueError: for an unknown name.
    """
    if norm is None:
        return None
    if callable(norm):
        return norm(out_channels)
    if norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(out_channels)
    if norm in ("BN", "SyncBN"):
        return nn.BatchNorm2d(out_channels)
    if norm == "GN":
        return nn.GroupNorm(32, out_channels)
    raise ConfigError(
        f"unknown normalization {norm!r}; use one of {', '.join(repr(n) for n in SUPPORTED_NORMS)} "
        "(e.g. MODEL.VOVNET.NORM FrozenBN)"
    )


def conv3x3_norm_relu(in_channels: int, out_channels: int, norm: str = "", stride: int = 1) -> Conv2d:
    """The heads' stacked layer: a 3x3 convolution (padding 1), a norm when ``norm`` names one (the
    convolution then has no bias), ReLU; as detectron2's mask, MaskIoU and semantic heads build it."""
    return Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=not norm,
                  norm=get_norm(norm, out_channels), activation=F.relu)


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients through ``module`` and turn its batch norms into ``FrozenBatchNorm2d``.

    Args:
        module: the module to freeze (converted in place where possible).

    Returns:
        The frozen module (a new object only if ``module`` itself was a batch norm).
    """
    for p in module.parameters():
        p.requires_grad = False
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2 "XavierFill": uniform Kaiming with ``a=1`` on the weight, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2 "MSRAFill": normal Kaiming (fan_out, relu) on the weight, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm and activation, as detectron2's ``Conv2d``.

    The norm is a child module named ``norm``, so its tensors appear as ``<conv>.norm.weight``
    etc. in the state dict, next to ``<conv>.weight`` / ``<conv>.bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """
        Args:
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
                as for ``nn.Conv2d``.
            norm: normalization applied after the convolution (before the activation).
            activation: function applied last, e.g. ``F.relu``.
        """
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C_in, H, W]): input.

        Returns:
            Tensor[N, C_out, H', W']: convolved, normalized, activated.
        """
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class DeformConv2d(nn.Module):
    """A (modulated) deformable convolution, detectron2's ``DeformConv`` / ``ModulatedDeformConv``.

    It holds ``weight (Tensor[C_out, C_in / groups, k, k])`` (plus ``bias`` when asked, and an
    optional ``norm`` child) under detectron2's names, so ``_dcn_`` checkpoints load, and runs the
    named op ``centermask2::deform_conv2d`` (plain-PyTorch reference on every device, ONNX
    ``DeformConv`` when exported).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        modulated: bool = False,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        layer_name: str = "",
    ) -> None:
        """
        Args:
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as for a
                convolution.
            deformable_groups: number of offset groups.
            modulated: True for DCNv2 (``ModulatedDeformConv``: offsets plus a sigmoid mask).
            bias: whether a ``bias (Tensor[C_out])`` parameter exists (only allowed if modulated,
                as in detectron2).
            norm: normalization child applied after the convolution.
            activation: function applied last.
            layer_name: name used in the error message.
        """
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ConfigError(
                f"deformable conv channels ({in_channels} -> {out_channels}) must be divisible "
                f"by groups={groups}"
            )
        if bias and not modulated:
            raise ConfigError("a non-modulated deformable conv has no bias; pass bias=False")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.modulated = modulated
        self.layer_name = layer_name
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.norm = norm
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(
        self,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor | None = None,
        region: ValidRegion | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C_in, H, W]): input; with ``region``, already 0 outside it.
            offset (Tensor[N, 2 * deformable_groups * k * k, H', W']): (dy, dx) sampling offsets per tap.
            mask (Tensor[N, deformable_groups * k * k, H', W'] or None): modulation in [0, 1] (DCNv2).
            region (:class:`~centermask2.modeling.layers.padding.ValidRegion` or None): region of ``x``;
                the norm then takes its statistics inside the output's region.

        Returns:
            Tensor[N, C_out, H', W'] after ``norm`` and ``activation``.
        """
        if self.modulated and mask is None:
            raise ValueError(f"modulated deformable conv {self.layer_name!r} needs a mask")
        mask = mask if self.modulated else None
        if requires_autograd(x, offset, mask, self.weight, self.bias):  # training: differentiable reference
            x = deform_conv2d_reference(
                x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                self.deformable_groups,
            )
        else:
            x = deform_conv2d(
                x, offset, mask, self.weight, self.bias, list(self.stride), list(self.padding), list(self.dilation),
                self.groups, self.deformable_groups,
            )
        if self.norm is not None:
            if region is None:
                x = self.norm(x)
            else:
                x = run(self.norm, x, region.after(self.kernel_size, self.stride, self.padding, self.dilation))
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deformable_groups={self.deformable_groups}, "
            f"modulated={self.modulated}, bias={self.bias is not None}"
        )
