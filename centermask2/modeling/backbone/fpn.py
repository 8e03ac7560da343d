"""Feature Pyramid Network (detectron2 semantics) and CenterMask2's FCOS top blocks.

For each input feature with stride ``2**k`` the FPN owns ``fpn_lateral<k>`` (1x1 conv) and
``fpn_output<k>`` (3x3 conv), both with bias when there is no norm. Top-down: the coarsest
lateral is used as is; each finer level adds its lateral to the 2x nearest upsampling of the
previous (pre-output-conv) sum (``"avg"`` fusion halves the sum). The output convs then give
``p<k>``. A top block appends coarser levels: ``LastLevelP6P7`` computes ``p6 = conv(p5)`` and
``p7 = conv(relu(p6))`` (3x3, stride 2), ``LastLevelP6`` only ``p6``; both read the FPN output
``p5``, not the backbone's ``res5`` / ``stage5``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..layers import Conv2d, ValidRegion, c2_xavier_fill, get_norm, output_region, run
from .base import Backbone

logger = logging.getLogger(__name__)

__all__ = ["FPN", "LastLevelP6P7", "LastLevelP6", "build_fcos_top_block"]


class LastLevelP6P7(nn.Module):
    """Two extra levels: ``p6 = conv3x3_s2(p5)``, ``p7 = conv3x3_s2(relu(p6))`` (children p6, p7)."""

    def __init__(self, *, in_channels: int, out_channels: int, in_feature: str = "p5") -> None:
        """
        Args:
            in_channels: channels of the input level.
            out_channels: channels of p6 and p7.
            in_feature: name of the input level (an FPN output or a backbone feature).
        """
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> list[torch.Tensor]:
        """
        Args:
            x (Tensor[N, C_in, H, W]): input level.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            list[Tensor]: ``[p6, p7]``, ``p6 (Tensor[N, C, ceil(H/2), ceil(W/2)])``,
            ``p7 (Tensor[N, C, ceil(H/4), ceil(W/4)])``.
        """
        p6 = run(self.p6, x, region)
        p7 = run(self.p7, F.relu(p6), output_region(self.p6, region))
        return [p6, p7]

    def output_regions(self, region: ValidRegion | None) -> list[ValidRegion | None]:
        """Regions of ``[p6, p7]``."""
        p6 = output_region(self.p6, region)
        return [p6, output_region(self.p7, p6)]


class LastLevelP6(nn.Module):
    """One extra level: ``p6 = conv3x3_s2(p5)`` (child p6)."""

    def __init__(self, *, in_channels: int, out_channels: int, in_feature: str = "p5") -> None:
        """
        Args:
            in_channels: channels of the input level.
            out_channels: channels of p6.
            in_feature: name of the input level.
        """
        super().__init__()
        self.num_levels = 1
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        c2_xavier_fill(self.p6)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> list[torch.Tensor]:
        """
        Args:
            x (Tensor[N, C_in, H, W]): input level.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            list[Tensor]: ``[p6 (Tensor[N, C, ceil(H/2), ceil(W/2)])]``.
        """
        return [run(self.p6, x, region)]

    def output_regions(self, region: ValidRegion | None) -> list[ValidRegion | None]:
        """Regions of ``[p6]``."""
        return [output_region(self.p6, region)]


def build_fcos_top_block(top_levels: int, out_channels: int) -> nn.Module | None:
    """Top block for MODEL.FCOS.TOP_LEVELS: 2 -> P6P7, 1 -> P6, 0 -> None, all fed by ``p5``.

    Raises:
        ValueError: for any other value.
    """
    if top_levels == 2:
        return LastLevelP6P7(in_channels=out_channels, out_channels=out_channels, in_feature="p5")
    if top_levels == 1:
        return LastLevelP6(in_channels=out_channels, out_channels=out_channels, in_feature="p5")
    if top_levels == 0:
        return None
    raise ConfigError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {top_levels!r}")


class FPN(Backbone):
    """Feature pyramid on top of a bottom-up :class:`Backbone`.

    State-dict order: ``fpn_lateral<k>``/``fpn_output<k>`` per level (fine to coarse), then
    ``top_block``, then ``bottom_up``. Outputs ``p<k>`` for each input level plus the top-block
    levels. :attr:`size_divisibility` is the stride of the coarsest *input* feature (32 for
    res5 / stage5), not that of the top-block levels, as in detectron2.
    """

    def __init__(
        self,
        *,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
    ) -> None:
        """
        Args:
            bottom_up: bottom-up network; must return every name in ``in_features``.
            in_features: bottom-up features used, fine to coarse, strides doubling each step.
            out_channels: channels of every pyramid level.
            norm: normalization of the lateral and output convs (``""``: none, convs have bias).
            top_block: module with attributes ``num_levels`` and ``in_feature`` returning a list
                of extra, coarser levels; or None.
            fuse_type: ``"sum"`` or ``"avg"`` (sum halved).
        """
        super().__init__()
        in_features = list(in_features)
        if not in_features:
            raise ConfigError("MODEL.FPN.IN_FEATURES is empty; list e.g. ['res3', 'res4', 'res5']")
        available = bottom_up.out_feature_strides
        missing = [f for f in in_features if f not in available]
        if missing:
            raise ConfigError(
                f"MODEL.FPN.IN_FEATURES {in_features} includes {missing}, which the bottom-up "
                f"{type(bottom_up).__name__} does not return (it returns {list(available)}); "
                "align MODEL.FPN.IN_FEATURES with the backbone's OUT_FEATURES"
            )
        if fuse_type not in ("sum", "avg"):
            raise ConfigError(f"MODEL.FPN.FUSE_TYPE must be 'sum' or 'avg', got {fuse_type!r}")
        strides = [available[f] for f in in_features]
        channels = [bottom_up.out_feature_channels[f] for f in in_features]
        for prev, cur in zip(strides[:-1], strides[1:], strict=True):
            if cur != 2 * prev:
                raise ConfigError(
                    f"MODEL.FPN.IN_FEATURES {in_features} have strides {strides}, which do not "
                    "double from one to the next; list contiguous levels from fine to coarse"
                )

        use_bias = norm == ""
        lateral_convs: list[Conv2d] = []
        output_convs: list[Conv2d] = []
        level = 0
        for stride, in_ch in zip(strides, channels, strict=True):
            level = int(math.log2(stride))
            lateral = Conv2d(
                in_ch, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels)
            )
            output = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Plain lists (the modules are registered above), coarse to fine for the top-down pass.
        self._lateral_convs = lateral_convs[::-1]
        self._output_convs = output_convs[::-1]
        self.top_block = top_block
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self._fuse_type = fuse_type

        self._feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None and not (
            top_block.in_feature in self._feature_strides or top_block.in_feature in available
        ):
            raise ConfigError(
                f"the FPN top block reads {top_block.in_feature!r}, which is neither an FPN level "
                f"{list(self._feature_strides)} nor a bottom-up feature {list(available)}; "
                "end MODEL.FPN.IN_FEATURES with the stride-32 feature (res5 / stage5)"
            )
        if top_block is not None:
            for extra in range(level + 1, level + 1 + top_block.num_levels):
                self._feature_strides[f"p{extra}"] = 2**extra
        self._feature_channels = {name: out_channels for name in self._feature_strides}
        self._out_features = list(self._feature_strides)
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        """Stride of the coarsest input feature (32 with res5 / stage5 as last input)."""
        return self._size_divisibility

    @classmethod
    def from_config(cls, cfg: Any, bottom_up: Backbone) -> FPN:
        """FCOS-style FPN: ``cfg.MODEL.FPN`` (IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE) plus the
        top block chosen by ``cfg.MODEL.FCOS.TOP_LEVELS``."""
        fcfg = cfg.MODEL.FPN
        out_channels = int(fcfg.OUT_CHANNELS)
        return cls(
            bottom_up=bottom_up,
            in_features=list(fcfg.IN_FEATURES),
            out_channels=out_channels,
            norm=fcfg.NORM,
            top_block=build_fcos_top_block(int(cfg.MODEL.FCOS.TOP_LEVELS), out_channels),
            fuse_type=fcfg.FUSE_TYPE,
        )

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor[N, C, H, W]): normalized images, H and W multiples of
                :attr:`size_divisibility` (otherwise the 2x upsampling may not line up).
            region: if given, the valid part of each image (:mod:`..layers.padding`).

        Returns:
            dict[str, Tensor]: ``{"p3": Tensor[N, out_channels, H/8, W/8], ..., "p7": ...}``,
            fine to coarse, keys :attr:`out_features`.
        """
        return self.forward_with_regions(x, region)[0]

    def forward_with_regions(
        self, x: torch.Tensor, region: ValidRegion | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, ValidRegion | None]]:
        bottom_up_features, bottom_up_regions = self.bottom_up.forward_with_regions(x, region)
        # Each level has its lateral's region: the 2x upsampled coarser map covers exactly that
        # much (upstream could not add them otherwise) and the lateral is 1x1.
        level_regions = [bottom_up_regions[name] for name in self.in_features[::-1]]
        prev = run(self._lateral_convs[0], bottom_up_features[self.in_features[-1]], level_regions[0])
        results = [run(self._output_convs[0], prev, level_regions[0])]
        for idx in range(1, len(self._lateral_convs)):
            lateral = run(
                self._lateral_convs[idx], bottom_up_features[self.in_features[-idx - 1]], level_regions[idx]
            )
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = lateral + top_down
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, run(self._output_convs[idx], prev, level_regions[idx]))
        regions = level_regions[::-1]
        if self.top_block is not None:
            source = self.top_block.in_feature
            if source in bottom_up_features:
                top_input, top_region = bottom_up_features[source], bottom_up_regions[source]
            else:
                index = self._out_features.index(source)
                top_input, top_region = results[index], regions[index]
            results.extend(self.top_block(top_input, top_region))
            regions.extend(self.top_block.output_regions(top_region))
        return (
            dict(zip(self._out_features, results, strict=True)),
            dict(zip(self._out_features, regions, strict=True)),
        )
