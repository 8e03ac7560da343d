"""MobileNetV2 bottom-up network as in centermask2's ``mobilenet.py``.

``features`` is a ModuleList: ``features.0`` is a 3x3 stride-2 conv + FrozenBN + ReLU6 stem,
``features.1``..``features.17`` are inverted-residual blocks. The outputs of blocks 3, 6, 13
and 17 are the features ``res2`` (24 ch, stride 4), ``res3`` (32 ch, stride 8), ``res4``
(96 ch, stride 16) and ``res5`` (320 ch, stride 32); CenterMask-Lite feeds res3..res5 to the FPN.
Norms are always ``FrozenBatchNorm2d`` (MODEL.RESNETS.NORM is not consulted, as upstream).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ..layers import FrozenBatchNorm2d, ValidRegion, output_region, run, run_with_region
from .base import Backbone

logger = logging.getLogger(__name__)

__all__ = ["InvertedResidual", "MobileNetV2", "build_mnv2_backbone", "MOBILENETV2_SETTINGS"]

# (expansion t, output channels c, repeats n, first stride s) per group of blocks.
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Index in ``features`` whose output is res2, res3, res4, res5.
_RETURN_INDICES: tuple[int, int, int, int] = (3, 6, 13, 17)


def _conv_bn(
    in_channels: int, out_channels: int, *, kernel_size: int, stride: int, groups: int = 1
) -> list[nn.Module]:
    """A bias-free conv followed by ``FrozenBatchNorm2d`` (two list entries)."""
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        FrozenBatchNorm2d(out_channels),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, BN, ReLU6,] 3x3 depthwise, BN, ReLU6, 1x1 project, BN.

    The expansion part is absent when ``expand_ratio == 1``; the input is added when the stride
    is 1 and the width is unchanged. Layers live in ``conv`` (an ``nn.Sequential``).
    """

    def __init__(self, *, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        """
        Args:
            in_channels, out_channels: block widths.
            stride: 1 or 2 (in the depthwise conv).
            expand_ratio: hidden width = round(in_channels * expand_ratio).
        """
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn(in_channels, hidden, kernel_size=1, stride=1)
            layers.append(nn.ReLU6(inplace=True))
        layers += _conv_bn(hidden, hidden, kernel_size=3, stride=stride, groups=hidden)
        layers.append(nn.ReLU6(inplace=True))
        layers += _conv_bn(hidden, out_channels, kernel_size=1, stride=1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, in_channels, H, W]): input.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            Tensor[N, out_channels, H / stride, W / stride]: output.
        """
        if self.use_res_connect:
            return x + run(self.conv, x, region)
        return run(self.conv, x, region)

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return output_region(self.conv, region)


class MobileNetV2(Backbone):
    """MobileNetV2 (width multiplier 1) producing ``res2``..``res5``."""

    def __init__(
        self,
        *,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        in_channels: int = 3,
        freeze_at: int = 0,
    ) -> None:
        """
        Args:
            out_features: features returned by ``forward`` (subset of res2..res5).
            in_channels: input image channels.
            freeze_at: stop gradients in ``features[:freeze_at]``.
        """
        super().__init__()
        width = 32
        stem = nn.Sequential(*_conv_bn(in_channels, width, kernel_size=3, stride=2), nn.ReLU6(inplace=True))
        self.features = nn.ModuleList([stem])
        stride = 2
        for t, c, n, s in MOBILENETV2_SETTINGS:
            for i in range(n):
                block_stride = s if i == 0 else 1
                self.features.append(
                    InvertedResidual(in_channels=width, out_channels=c, stride=block_stride, expand_ratio=t)
                )
                width = c
                stride *= block_stride
                index = len(self.features) - 1
                if index in _RETURN_INDICES:
                    name = f"res{_RETURN_INDICES.index(index) + 2}"
                    self._feature_strides[name] = stride
                    self._feature_channels[name] = c
        self._return_names = {idx: f"res{k + 2}" for k, idx in enumerate(_RETURN_INDICES)}
        self._set_out_features(out_features, "MODEL.RESNETS.OUT_FEATURES")
        self._last_index = max(idx for idx, name in self._return_names.items() if name in self._out_features)
        self._init_weights()
        for layer in self.features[:freeze_at]:
            for p in layer.parameters():
                p.requires_grad = False

    def _init_weights(self) -> None:
        """Random init as upstream: convs ~ N(0, sqrt(2 / (k * k * C_out)))."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg: Any) -> MobileNetV2:
        """Build from ``cfg.MODEL.RESNETS.OUT_FEATURES`` and ``cfg.MODEL.BACKBONE.FREEZE_AT``
        (upstream reads the ResNet keys for MobileNetV2)."""
        return cls(
            out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
            in_channels=len(cfg.MODEL.PIXEL_MEAN),
            freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT),
        )

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor[N, C, H, W]): normalized images.
            region: if given, the valid part of each image (:mod:`..layers.padding`).

        Returns:
            dict[str, Tensor]: ``{name: Tensor[N, C_name, H_name, W_name]}`` for each name in
            ``out_features``.
        """
        return self.forward_with_regions(x, region)[0]

    def forward_with_regions(
        self, x: torch.Tensor, region: ValidRegion | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, ValidRegion | None]]:
        outputs: dict[str, torch.Tensor] = {}
        regions: dict[str, ValidRegion | None] = {}
        if region is not None:
            x = x.clone()  # masks apply in place; the caller's tensor stays as it was
        for idx, layer in enumerate(self.features):
            if idx > self._last_index:
                break
            x, region = run_with_region(layer, x, region)
            name = self._return_names.get(idx)
            if name is not None and name in self._out_features:
                outputs[name], regions[name] = x, region
        return outputs, regions


def build_mnv2_backbone(cfg: Any) -> MobileNetV2:
    """Build the MobileNetV2 bottom-up network from a config (see :meth:`MobileNetV2.from_config`)."""
    return MobileNetV2.from_config(cfg)
