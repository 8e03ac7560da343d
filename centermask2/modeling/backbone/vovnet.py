"""VoVNetV2 (One-Shot Aggregation with identity mapping and effective Squeeze-Excitation).

Module and parameter names follow centermask2's ``vovnet.py`` (``stem.stem_1/conv.weight``,
``stage3.OSA3_1.layers.0.OSA3_1_0/norm.running_var`` ...) so official checkpoints load as is.

Structure of one network:

* stem: three 3x3 conv-norm-ReLU units with strides 2, 1, 2 (stride 4 overall). In the
  depthwise variants the second and third units are depthwise-separable
  (3x3 depthwise conv, 1x1 pointwise conv, norm, ReLU).
* stage2..stage5: stage2 keeps the stem resolution; each later stage starts with a
  ``MaxPool2d(3, stride=2, ceil_mode=True)`` named ``Pooling``. A stage is a sequence of OSA
  modules; the first has no residual, every following one adds its input (identity mapping).
* OSA module: ``layers_per_block`` 3x3 units in a chain; the module input and every unit output
  are concatenated, reduced by a 1x1 conv-norm-ReLU ("concat"), then gated by eSE:
  ``y * hsigmoid(fc(avgpool(y)))`` with ``hsigmoid(t) = relu6(t + 3) / 6`` and ``fc`` a 1x1 conv
  with bias, channels unchanged. eSE is applied in every OSA module.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..layers import DeformConv2d, FrozenBatchNorm2d, ValidRegion, get_norm, run
from .base import Backbone

logger = logging.getLogger(__name__)

__all__ = [
    "VoVNetSpec",
    "VOVNET_SPECS",
    "Hsigmoid",
    "ESEModule",
    "OSAModule",
    "OSAStage",
    "DeformConvUnit",
    "VoVNet",
    "build_vovnet_backbone",
]


@dataclass(frozen=True)
class VoVNetSpec:
    """Architecture of one VoVNet variant.

    Attributes:
        stem_channels: output channels of the three stem units.
        stage_conv_channels: channels of the 3x3 units inside the OSA modules of stage2..5.
        stage_out_channels: output channels of the OSA modules of stage2..5.
        layers_per_block: number of 3x3 units per OSA module.
        blocks_per_stage: number of OSA modules in stage2..5.
        depthwise: use depthwise-separable 3x3 units (stem units 2 and 3 and all OSA units).
    """

    stem_channels: tuple[int, int, int]
    stage_conv_channels: tuple[int, int, int, int]
    stage_out_channels: tuple[int, int, int, int]
    layers_per_block: int
    blocks_per_stage: tuple[int, int, int, int]
    depthwise: bool


_WIDE_CONV = (128, 160, 192, 224)
_WIDE_OUT = (256, 512, 768, 1024)
_SLIM_CONV = (64, 80, 96, 112)
_SLIM_OUT = (112, 256, 384, 512)

VOVNET_SPECS: dict[str, VoVNetSpec] = {
    "V-19-slim-dw-eSE": VoVNetSpec((64, 64, 64), _SLIM_CONV, _SLIM_OUT, 3, (1, 1, 1, 1), True),
    "V-19-dw-eSE": VoVNetSpec((64, 64, 64), _WIDE_CONV, _WIDE_OUT, 3, (1, 1, 1, 1), True),
    "V-19-slim-eSE": VoVNetSpec((64, 64, 128), _SLIM_CONV, _SLIM_OUT, 3, (1, 1, 1, 1), False),
    "V-19-eSE": VoVNetSpec((64, 64, 128), _WIDE_CONV, _WIDE_OUT, 3, (1, 1, 1, 1), False),
    "V-39-eSE": VoVNetSpec((64, 64, 128), _WIDE_CONV, _WIDE_OUT, 5, (1, 1, 2, 2), False),
    "V-57-eSE": VoVNetSpec((64, 64, 128), _WIDE_CONV, _WIDE_OUT, 5, (1, 1, 4, 3), False),
    "V-99-eSE": VoVNetSpec((64, 64, 128), _WIDE_CONV, _WIDE_OUT, 5, (1, 3, 9, 3), False),
}


@dataclass(frozen=True)
class _DeformSettings:
    """Deformable-conv settings of one stage (from MODEL.VOVNET.*DCN*)."""

    modulated: bool
    deformable_groups: int


def _conv_unit(
    in_channels: int,
    out_channels: int,
    prefix: str,
    *,
    kernel_size: int,
    stride: int,
    norm: str,
) -> list[tuple[str, nn.Module]]:
    """Named layers of a conv (no bias) + norm + ReLU unit: ``<prefix>/conv``, ``/norm``, ``/relu``."""
    layers: list[tuple[str, nn.Module]] = [
        (
            f"{prefix}/conv",
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                bias=False,
            ),
        )
    ]
    norm_layer = get_norm(norm, out_channels)
    if norm_layer is not None:
        layers.append((f"{prefix}/norm", norm_layer))
    layers.append((f"{prefix}/relu", nn.ReLU(inplace=True)))
    return layers


def _separable_unit(
    in_channels: int, out_channels: int, prefix: str, *, stride: int, norm: str
) -> list[tuple[str, nn.Module]]:
    """Named layers of a depthwise-separable unit.

    ``<prefix>/dw_conv3x3`` (3x3 depthwise, carries the stride), ``/pw_conv1x1``, ``/pw_norm``,
    ``/pw_relu``; there is no norm or activation between the depthwise and pointwise convs.
    """
    if in_channels != out_channels:
        raise ConfigError(
            f"depthwise unit {prefix!r} needs equal in/out channels, got {in_channels} -> {out_channels}"
        )
    layers: list[tuple[str, nn.Module]] = [
        (
            f"{prefix}/dw_conv3x3",
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=3,
                stride=stride,
                padding=1,
                groups=out_channels,
                bias=False,
            ),
        ),
        (f"{prefix}/pw_conv1x1", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)),
    ]
    norm_layer = get_norm(norm, out_channels)
    if norm_layer is not None:
        layers.append((f"{prefix}/pw_norm", norm_layer))
    layers.append((f"{prefix}/pw_relu", nn.ReLU(inplace=True)))
    return layers


class Hsigmoid(nn.Module):
    """Hard sigmoid as in VoVNetV2: ``relu6(x + 3) / 6``."""

    pointwise = True  # see centermask2.modeling.layers.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor[...]): input.

        Returns:
            Tensor[...]: values in [0, 1].
        """
        return F.relu6(x + 3.0) / 6.0


class ESEModule(nn.Module):
    """Effective Squeeze-Excitation: one 1x1 conv (with bias, C -> C) on the global average.

    Children: ``avg_pool`` (no tensors), ``fc`` (``fc.weight (Tensor[C, C, 1, 1])``,
    ``fc.bias (Tensor[C])``), ``hsigmoid``.
    """

    def __init__(self, *, channels: int) -> None:
        """
        Args:
            channels: C, the number of input (and output) channels.
        """
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0)
        self.hsigmoid = Hsigmoid()

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C, H, W]): input.
            region: if given, the mean is taken over each image's region only.

        Returns:
            Tensor[N, C, H, W]: ``x`` scaled per channel by ``hsigmoid(fc(mean_hw(x)))``.
        """
        pooled = self.avg_pool(x) if region is None else region.mean(x)
        return x * self.hsigmoid(self.fc(pooled))

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return region


class DeformConvUnit(nn.Module):
    """A 3x3 deformable conv-norm-ReLU unit of a ``_dcn_`` VoVNet (upstream ``DFConv3x3``).

    Children (names contain ``/``): ``<prefix>/conv_offset`` (3x3 conv with bias, producing
    ``(27 if modulated else 18) * deformable_groups`` channels), ``<prefix>/conv`` (the
    deformable conv weight, no bias), ``<prefix>/norm``. As upstream, ``conv_offset``'s output is
    split in three equal chunks: the first two are the (dy, dx) offsets (18 channels per group),
    the third the mask logits (sigmoid), for DCNv2; DCNv1 uses all 18 channels as offsets.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        prefix: str,
        norm: str,
        modulated: bool,
        deformable_groups: int,
    ) -> None:
        """
        Args:
            in_channels, out_channels: channels of the 3x3 convolution.
            prefix: unit name, e.g. ``"OSA3_1_0"``.
            norm: normalization name (see :func:`get_norm`).
            modulated: DCNv2 (offsets and mask) instead of DCNv1 (offsets only).
            deformable_groups: number of offset groups.
        """
        super().__init__()
        self.modulated = modulated
        offset_channels = (27 if modulated else 18) * deformable_groups
        self._offset_name = f"{prefix}/conv_offset"
        self._conv_name = f"{prefix}/conv"
        self._norm_name = f"{prefix}/norm"
        offset_conv = nn.Conv2d(in_channels, offset_channels, kernel_size=3, stride=1, padding=1)
        nn.init.zeros_(offset_conv.weight)
        nn.init.zeros_(offset_conv.bias)
        self.add_module(self._offset_name, offset_conv)
        self.add_module(
            self._conv_name,
            DeformConv2d(
                in_channels,
                out_channels,
                3,
                stride=1,
                padding=1,
                deformable_groups=deformable_groups,
                modulated=modulated,
                bias=False,
                layer_name=prefix,
            ),
        )
        norm_layer = get_norm(norm, out_channels)
        self.add_module(self._norm_name, norm_layer if norm_layer is not None else nn.Identity())

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C_in, H, W]): input.
            region: if given, values outside it read as 0 (also for the deformable samples).

        Returns:
            Tensor[N, C_out, H, W].
        """
        if region is not None:
            x = region.fill_outside(x, 0.0)
        offset_out = getattr(self, self._offset_name)(x)
        deform_conv = getattr(self, self._conv_name)
        if self.modulated:
            offset_x, offset_y, mask = torch.chunk(offset_out, 3, dim=1)
            out = deform_conv(x, torch.cat((offset_x, offset_y), dim=1), mask.sigmoid())
        else:
            out = deform_conv(x, offset_out)
        return F.relu(run(getattr(self, self._norm_name), out, region))

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return region  # 3x3, stride 1, padding 1


class OSAModule(nn.Module):
    """One-Shot Aggregation module with eSE and optional identity mapping.

    Children in registration order: ``layers`` (ModuleList of 3x3 units), ``conv_reduction``
    (depthwise variants only, when the input width differs from the unit width: a 1x1
    conv-norm-ReLU named ``<name>_reduction_0``), ``concat`` (1x1 conv-norm-ReLU named
    ``<name>_concat``), ``ese``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        stage_channels: int,
        concat_channels: int,
        layers_per_block: int,
        name: str,
        identity: bool,
        depthwise: bool,
        norm: str,
        deform: _DeformSettings | None = None,
    ) -> None:
        """
        Args:
            in_channels: channels of the module input.
            stage_channels: channels of every 3x3 unit.
            concat_channels: output channels.
            layers_per_block: number of 3x3 units.
            name: module name, e.g. ``"OSA4_2"``; unit ``i`` is named ``"<name>_<i>"``.
            identity: add the input to the output (needs ``in_channels == concat_channels``).
            depthwise: depthwise-separable units (takes precedence over ``deform``).
            norm: normalization name.
            deform: deformable-unit settings, or None for plain 3x3 units.
        """
        super().__init__()
        if identity and in_channels != concat_channels:
            raise ConfigError(
                f"{name}: identity mapping needs in_channels == concat_channels, "
                f"got {in_channels} and {concat_channels}"
            )
        self.identity = identity
        self.layers = nn.ModuleList()
        self.is_reduced = depthwise and in_channels != stage_channels
        if self.is_reduced:
            self.conv_reduction = nn.Sequential(
                OrderedDict(
                    _conv_unit(
                        in_channels,
                        stage_channels,
                        f"{name}_reduction_0",
                        kernel_size=1,
                        stride=1,
                        norm=norm,
                    )
                )
            )
        unit_in = stage_channels if depthwise else in_channels
        for i in range(layers_per_block):
            prefix = f"{name}_{i}"
            if depthwise:
                unit: nn.Module = nn.Sequential(
                    OrderedDict(_separable_unit(unit_in, stage_channels, prefix, stride=1, norm=norm))
                )
            elif deform is not None:
                unit = DeformConvUnit(
                    in_channels=unit_in,
                    out_channels=stage_channels,
                    prefix=prefix,
                    norm=norm,
                    modulated=deform.modulated,
                    deformable_groups=deform.deformable_groups,
                )
            else:
                unit = nn.Sequential(
                    OrderedDict(
                        _conv_unit(unit_in, stage_channels, prefix, kernel_size=3, stride=1, norm=norm)
                    )
                )
            self.layers.append(unit)
            unit_in = stage_channels
        aggregated = in_channels + layers_per_block * stage_channels
        self.concat = nn.Sequential(
            OrderedDict(
                _conv_unit(aggregated, concat_channels, f"{name}_concat", kernel_size=1, stride=1, norm=norm)
            )
        )
        self.ese = ESEModule(channels=concat_channels)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, in_channels, H, W]): input.
            region: if given, padding outside it has no effect (see :mod:`..layers.padding`).

        Returns:
            Tensor[N, concat_channels, H, W]: aggregated features.
        """
        # The unreduced input is both the first concatenated map and the residual.
        collected = [x]
        y = run(self.conv_reduction, x, region) if self.is_reduced else x
        for unit in self.layers:
            y = run(unit, y, region)
            collected.append(y)
        out = self.ese(run(self.concat, torch.cat(collected, dim=1), region), region)
        if self.identity:
            out = out + x
        return out

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return region  # every unit keeps the size


class OSAStage(nn.Sequential):
    """``Pooling`` (stages 3-5 only) followed by ``OSA<n>_1`` .. ``OSA<n>_<blocks>``."""

    def __init__(
        self,
        *,
        stage: int,
        in_channels: int,
        stage_channels: int,
        concat_channels: int,
        blocks: int,
        layers_per_block: int,
        depthwise: bool,
        norm: str,
        deform: _DeformSettings | None = None,
    ) -> None:
        """
        Args:
            stage: stage number, 2 to 5.
            in_channels: channels entering the stage.
            stage_channels, concat_channels, layers_per_block, depthwise, norm, deform:
                as for :class:`OSAModule`.
            blocks: number of OSA modules.
        """
        super().__init__()
        if stage != 2:
            self.add_module("Pooling", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        for b in range(blocks):
            name = f"OSA{stage}_{b + 1}"
            self.add_module(
                name,
                OSAModule(
                    in_channels=in_channels if b == 0 else concat_channels,
                    stage_channels=stage_channels,
                    concat_channels=concat_channels,
                    layers_per_block=layers_per_block,
                    name=name,
                    identity=b > 0,
                    depthwise=depthwise,
                    norm=norm,
                    deform=deform,
                ),
            )


class VoVNet(Backbone):
    """VoVNetV2 bottom-up network.

    Features: ``stem`` (stride 4), ``stage2`` (4), ``stage3`` (8), ``stage4`` (16),
    ``stage5`` (32); ``forward`` returns those in ``out_features``.
    """

    def __init__(
        self,
        *,
        spec: VoVNetSpec,
        in_channels: int = 3,
        out_features: Sequence[str] = ("stage2", "stage3", "stage4", "stage5"),
        norm: str = "FrozenBN",
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        with_modulated_dcn: bool = False,
        deformable_groups: int = 1,
        freeze_at: int = 0,
    ) -> None:
        """
        Args:
            spec: architecture, e.g. ``VOVNET_SPECS["V-39-eSE"]``.
            in_channels: input image channels.
            out_features: features returned by ``forward``.
            norm: normalization of every conv unit (``"FrozenBN"``, ``"BN"``, ``"GN"`` ...).
            stage_with_dcn: per stage2..5, build deformable 3x3 units (:class:`DeformConvUnit`).
                Ignored for depthwise variants, as upstream.
            with_modulated_dcn: DCNv2 instead of DCNv1.
            deformable_groups: offset groups of the deformable units.
            freeze_at: if > 0, stop gradients in the stem and the first ``freeze_at - 1`` stages
                and convert every batch norm to ``FrozenBatchNorm2d``, as upstream.
        """
        super().__init__()
        if len(stage_with_dcn) != 4:
            raise ConfigError(
                f"MODEL.VOVNET.STAGE_WITH_DCN needs 4 booleans (stage2..stage5), got {stage_with_dcn}"
            )
        self.spec = spec
        stem_ch = spec.stem_channels
        stem_units = _conv_unit(in_channels, stem_ch[0], "stem_1", kernel_size=3, stride=2, norm=norm)
        for idx, (c_in, c_out, stride) in enumerate(
            ((stem_ch[0], stem_ch[1], 1), (stem_ch[1], stem_ch[2], 2)), start=2
        ):
            if spec.depthwise:
                stem_units += _separable_unit(c_in, c_out, f"stem_{idx}", stride=stride, norm=norm)
            else:
                stem_units += _conv_unit(c_in, c_out, f"stem_{idx}", kernel_size=3, stride=stride, norm=norm)
        self.stem = nn.Sequential(OrderedDict(stem_units))
        self._feature_strides = {"stem": 4}
        self._feature_channels = {"stem": stem_ch[2]}

        self.stage_names: list[str] = []
        stride = 4
        stage_in = stem_ch[2]
        for i in range(4):
            stage = i + 2
            name = f"stage{stage}"
            deform = None
            if stage_with_dcn[i] and not spec.depthwise:
                deform = _DeformSettings(
                    modulated=bool(with_modulated_dcn), deformable_groups=int(deformable_groups)
                )
            self.add_module(
                name,
                OSAStage(
                    stage=stage,
                    in_channels=stage_in,
                    stage_channels=spec.stage_conv_channels[i],
                    concat_channels=spec.stage_out_channels[i],
                    blocks=spec.blocks_per_stage[i],
                    layers_per_block=spec.layers_per_block,
                    depthwise=spec.depthwise,
                    norm=norm,
                    deform=deform,
                ),
            )
            if stage > 2:
                stride *= 2
            self.stage_names.append(name)
            self._feature_strides[name] = stride
            self._feature_channels[name] = spec.stage_out_channels[i]
            stage_in = spec.stage_out_channels[i]
        self._set_out_features(out_features, "MODEL.VOVNET.OUT_FEATURES")
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """Freeze the stem (1) and stages (2 -> stage2, ...) below ``freeze_at``."""
        if freeze_at <= 0:
            return
        for idx in range(freeze_at):
            part = self.stem if idx == 0 else getattr(self, f"stage{idx + 1}", None)
            if part is not None:
                for p in part.parameters():
                    p.requires_grad = False
        # Upstream converts the whole network, not only the frozen part.
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)

    @classmethod
    def from_config(cls, cfg: Any) -> VoVNet:
        """Build from ``cfg.MODEL.VOVNET`` (CONV_BODY, OUT_FEATURES, NORM, STAGE_WITH_DCN,
        WITH_MODULATED_DCN, DEFORMABLE_GROUPS), ``cfg.MODEL.BACKBONE.FREEZE_AT`` and
        ``len(cfg.MODEL.PIXEL_MEAN)`` input channels."""
        vcfg = cfg.MODEL.VOVNET
        conv_body = vcfg.CONV_BODY
        if conv_body not in VOVNET_SPECS:
            raise ConfigError(
                f"unknown MODEL.VOVNET.CONV_BODY {conv_body!r}; choose one of {sorted(VOVNET_SPECS)}"
            )
        return cls(
            spec=VOVNET_SPECS[conv_body],
            in_channels=len(cfg.MODEL.PIXEL_MEAN),
            out_features=list(vcfg.OUT_FEATURES),
            norm=vcfg.NORM,
            stage_with_dcn=[bool(v) for v in vcfg.STAGE_WITH_DCN],
            with_modulated_dcn=bool(vcfg.WITH_MODULATED_DCN),
            deformable_groups=int(vcfg.DEFORMABLE_GROUPS),
            freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT),
        )

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor[N, C, H, W]): normalized images.
            region: if given, the valid part of each image (see :mod:`..layers.padding`).

        Returns:
            dict[str, Tensor]: ``{name: Tensor[N, C_name, ceil(H / s), ceil(W / s)]}`` for each
            name in ``out_features`` (stride ``s``; pooling rounds up).
        """
        return self._forward_stages(x, region)[0]


def build_vovnet_backbone(cfg: Any) -> VoVNet:
    """Build the VoVNet bottom-up network from a config (see :meth:`VoVNet.from_config`)."""
    return VoVNet.from_config(cfg)
