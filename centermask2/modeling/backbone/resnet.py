"""ResNet / ResNeXt bottom-up network with detectron2's module names and semantics.

``stem.conv1`` (7x7, stride 2, with ``.norm``) + ReLU + 3x3 max pool (stride 2, padding 1), then
stages ``res2``..``res5`` of residual blocks (``res<k>.<i>.conv1/conv2/conv3/shortcut``, each a
conv with a ``.norm`` child). Strides: stem 4, res2 4, res3 8, res4 16, res5 32 (res5 stays at
16 when RES5_DILATION is 2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..layers import (
    Conv2d,
    DeformConv2d,
    ValidRegion,
    c2_msra_fill,
    freeze_module,
    get_norm,
    max_pool2d,
    output_region,
    run,
)
from .base import Backbone

logger = logging.getLogger(__name__)

__all__ = [
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "ResNet",
    "make_resnet_stage",
    "build_resnet_backbone",
]

_BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class _Block(nn.Module):
    """Residual block base: records ``in_channels``, ``out_channels`` and ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> _Block:
        """Stop gradients and turn batch norms into ``FrozenBatchNorm2d`` (in place)."""
        freeze_module(self)
        return self


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    """1x1 projection shortcut when the width changes, else None (identity)."""
    if in_channels == out_channels:
        return None
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=1,
        stride=stride,
        bias=False,
        norm=get_norm(norm, out_channels),
    )


class BasicStem(_Block):
    """7x7 stride-2 conv (``conv1`` with ``conv1.norm``), ReLU, 3x3 stride-2 max pool."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN") -> None:
        """
        Args:
            in_channels: input image channels.
            out_channels: stem width (MODEL.RESNETS.STEM_OUT_CHANNELS).
            norm: normalization name.
        """
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C, H, W]): images.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            Tensor[N, out_channels, H', W']: features at stride 4.
        """
        x = F.relu(run(self.conv1, x, region))
        return max_pool2d(x, output_region(self.conv1, region), kernel_size=3, stride=2, padding=1)

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return output_region(self.conv1, region).after(3, 2, 1)


class BasicBlock(_Block):
    """Two 3x3 convs plus shortcut (ResNet-18/34)."""

    def __init__(
        self, *, in_channels: int, out_channels: int, stride: int = 1, norm: str = "FrozenBN"
    ) -> None:
        """
        Args:
            in_channels, out_channels: block widths.
            stride: stride of the first conv and of the shortcut.
            norm: normalization name.
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv2):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, in_channels, H, W]): input.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            Tensor[N, out_channels, H / stride, W / stride]: output.
        """
        out = run(self.conv2, F.relu(run(self.conv1, x, region)), output_region(self.conv1, region))
        shortcut = run(self.shortcut, x, region) if self.shortcut is not None else x
        return F.relu(out + shortcut)

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return output_region(self.conv2, output_region(self.conv1, region))


class BottleneckBlock(_Block):
    """1x1 -> 3x3 (grouped, maybe dilated) -> 1x1 bottleneck with shortcut (ResNet-50+/ResNeXt)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "FrozenBN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        """
        Args:
            in_channels, out_channels: block widths.
            bottleneck_channels: width of the 3x3 conv.
            stride: block stride.
            num_groups: groups of the 3x3 conv (ResNeXt cardinality).
            norm: normalization name.
            stride_in_1x1: put the stride in the first 1x1 conv (MSRA models) instead of the
                3x3 conv (Caffe2/torch ResNeXt models).
            dilation: dilation of the 3x3 conv.
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, in_channels, H, W]): input.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            Tensor[N, out_channels, H / stride, W / stride]: output.
        """
        out = F.relu(run(self.conv1, x, region))
        out = F.relu(run(self.conv2, out, output_region(self.conv1, region)))
        out = self.conv3(out)
        shortcut = run(self.shortcut, x, region) if self.shortcut is not None else x
        return F.relu(out + shortcut)

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return output_region(self.conv2, output_region(self.conv1, region))


class DeformBottleneckBlock(_Block):
    """Bottleneck whose 3x3 conv is deformable (detectron2's ``DeformBottleneckBlock``).

    Children: ``shortcut``, ``conv1``, ``conv2_offset`` (3x3 conv with bias producing
    ``(27 if modulated else 18) * deform_num_groups`` channels), ``conv2`` (deformable weight
    with ``conv2.norm``), ``conv3``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "FrozenBN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ) -> None:
        """
        Args:
            in_channels .. dilation: as for :class:`BottleneckBlock`.
            deform_modulated: DCNv2 instead of DCNv1.
            deform_num_groups: offset groups.
        """
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        offset_channels = (27 if deform_modulated else 18) * deform_num_groups
        self.conv2_offset = Conv2d(
            bottleneck_channels,
            offset_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        self.conv2 = DeformConv2d(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            deformable_groups=deform_num_groups,
            modulated=deform_modulated,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv3):
            if layer is not None:
                c2_msra_fill(layer)
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def forward(self, x: torch.Tensor, region: ValidRegion | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor[N, C_in, H, W]): input.
            region: if given, padding outside it has no effect (:mod:`..layers.padding`).

        Returns:
            Tensor[N, C_out, H / stride, W / stride].
        """
        out = F.relu(run(self.conv1, x, region))
        mid = output_region(self.conv1, region)
        if mid is not None:
            out = mid.fill_outside(out, 0.0)  # read by the offset conv and the deformable samples
        offset_out = self.conv2_offset(out)
        if self.deform_modulated:
            offset_x, offset_y, mask = torch.chunk(offset_out, 3, dim=1)
            out = self.conv2(out, torch.cat((offset_x, offset_y), dim=1), mask.sigmoid(), region=mid)
        else:
            out = self.conv2(out, offset_out, region=mid)
        out = self.conv3(F.relu(out))
        shortcut = run(self.shortcut, x, region) if self.shortcut is not None else x
        return F.relu(out + shortcut)

    def output_region(self, region: ValidRegion) -> ValidRegion:
        return output_region(self.conv2_offset, output_region(self.conv1, region))


def make_resnet_stage(
    block_class: type[_Block],
    *,
    num_blocks: int,
    in_channels: int,
    out_channels: int,
    first_stride: int,
    **block_kwargs: Any,
) -> list[_Block]:
    """Blocks of one stage: the first has stride ``first_stride``, the rest stride 1.

    Args:
        block_class: block type.
        num_blocks: number of blocks.
        in_channels: input width of the stage.
        out_channels: output width of every block.
        first_stride: stride of the first block.
        block_kwargs: other constructor arguments, shared by all blocks.
    """
    blocks = []
    for i in range(num_blocks):
        blocks.append(
            block_class(
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels,
                stride=first_stride if i == 0 else 1,
                **block_kwargs,
            )
        )
    return blocks


class ResNet(Backbone):
    """ResNet bottom-up network: ``stem`` then ``res2``..``res5`` (``nn.Sequential`` of blocks).

    Stages after the last one needed by ``out_features`` are not built (as detectron2).
    """

    def __init__(
        self,
        *,
        stem: BasicStem,
        stages: Sequence[Sequence[_Block]],
        out_features: Sequence[str],
        freeze_at: int = 0,
    ) -> None:
        """
        Args:
            stem: the stem module.
            stages: blocks of res2, res3, ... in order.
            out_features: features returned by ``forward`` (``"stem"``, ``"res2"``..``"res5"``).
            freeze_at: freeze the stem (>= 1) and stages res2.. up to ``res<freeze_at>``.
        """
        super().__init__()
        self.stem = stem
        self._feature_strides = {"stem": stem.stride}
        self._feature_channels = {"stem": stem.out_channels}
        valid = ["stem"] + [f"res{i + 2}" for i in range(len(stages))]
        unknown = [f for f in out_features if f not in valid]
        if not out_features or unknown:
            raise ConfigError(
                f"MODEL.RESNETS.OUT_FEATURES = {list(out_features)} is invalid: choose a non-empty "
                f"subset of {valid}"
            )
        num_stages = max(valid.index(f) for f in out_features)
        self.stage_names: list[str] = []
        stride = stem.stride
        for i, blocks in enumerate(stages[:num_stages]):
            if not blocks:
                raise ConfigError(f"stage res{i + 2} has no blocks")
            name = f"res{i + 2}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            for block in blocks:
                stride *= block.stride
            self._feature_strides[name] = stride
            self._feature_channels[name] = blocks[-1].out_channels
        self._set_out_features(out_features, "MODEL.RESNETS.OUT_FEATURES")
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (``freeze_at >= 1``) and every block of ``res<k>`` for ``k <= freeze_at``.

        Returns:
            This network.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                for block in getattr(self, name).children():
                    block.freeze()
        return self

    @classmethod
    def from_config(cls, cfg: Any) -> ResNet:
        """Build as detectron2's ``build_resnet_backbone`` from ``cfg.MODEL.RESNETS``
        (DEPTH, OUT_FEATURES, NUM_GROUPS, WIDTH_PER_GROUP, NORM, STRIDE_IN_1X1, RES5_DILATION,
        RES2_OUT_CHANNELS, STEM_OUT_CHANNELS, DEFORM_ON_PER_STAGE, DEFORM_MODULATED,
        DEFORM_NUM_GROUPS), ``cfg.MODEL.BACKBONE.FREEZE_AT`` and ``len(cfg.MODEL.PIXEL_MEAN)``."""
        rcfg = cfg.MODEL.RESNETS
        depth = int(rcfg.DEPTH)
        if depth not in _BLOCKS_PER_STAGE:
            raise ConfigError(
                f"MODEL.RESNETS.DEPTH = {depth} is not supported; use one of {sorted(_BLOCKS_PER_STAGE)}"
            )
        norm = rcfg.NORM
        num_groups = int(rcfg.NUM_GROUPS)
        bottleneck_channels = num_groups * int(rcfg.WIDTH_PER_GROUP)
        in_channels = int(rcfg.STEM_OUT_CHANNELS)
        out_channels = int(rcfg.RES2_OUT_CHANNELS)
        res5_dilation = int(rcfg.RES5_DILATION)
        deform_on = [bool(v) for v in rcfg.DEFORM_ON_PER_STAGE]
        if res5_dilation not in (1, 2):
            raise ConfigError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")
        if len(deform_on) != 4:
            raise ConfigError(
                f"MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 booleans (res2..res5), got {deform_on}"
            )
        if depth in (18, 34):
            problems = []
            if out_channels != 64:
                problems.append("MODEL.RESNETS.RES2_OUT_CHANNELS must be 64")
            if any(deform_on):
                problems.append("MODEL.RESNETS.DEFORM_ON_PER_STAGE must be all False")
            if res5_dilation != 1:
                problems.append("MODEL.RESNETS.RES5_DILATION must be 1")
            if num_groups != 1:
                problems.append("MODEL.RESNETS.NUM_GROUPS must be 1")
            if problems:
                raise ConfigError(f"for ResNet-{depth}: " + "; ".join(problems))

        stem = BasicStem(in_channels=len(cfg.MODEL.PIXEL_MEAN), out_channels=in_channels, norm=norm)
        stages = []
        for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
            stage_idx = idx + 2
            dilation = res5_dilation if stage_idx == 5 else 1
            first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
            common = {
                "num_blocks": num_blocks,
                "in_channels": in_channels,
                "out_channels": out_channels,
                "first_stride": first_stride,
                "norm": norm,
            }
            if depth in (18, 34):
                blocks = make_resnet_stage(BasicBlock, **common)
            else:
                bottleneck = {
                    "bottleneck_channels": bottleneck_channels,
                    "stride_in_1x1": bool(rcfg.STRIDE_IN_1X1),
                    "dilation": dilation,
                    "num_groups": num_groups,
                }
                if deform_on[idx]:
                    blocks = make_resnet_stage(
                        DeformBottleneckBlock,
                        **common,
                        **bottleneck,
                        deform_modulated=bool(rcfg.DEFORM_MODULATED),
                        deform_num_groups=int(rcfg.DEFORM_NUM_GROUPS),
                    )
                else:
                    blocks = make_resnet_stage(BottleneckBlock, **common, **bottleneck)
            stages.append(blocks)
            in_channels = out_channels
            out_channels *= 2
            bottleneck_channels *= 2
        return cls(
            stem=stem,
            stages=stages,
            out_features=list(rcfg.OUT_FEATURES),
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
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        return self._forward_stages(x, region)


def build_resnet_backbone(cfg: Any) -> ResNet:
    """Build the ResNet bottom-up network from a config (see :meth:`ResNet.from_config`)."""
    return ResNet.from_config(cfg)
