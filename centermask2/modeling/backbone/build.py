"""Backbone factory: ``cfg.MODEL.BACKBONE.NAME`` -> bottom-up network + FPN with FCOS top block.

Config keys read (all must exist in the config):
``MODEL.BACKBONE.{NAME, FREEZE_AT}``, ``MODEL.PIXEL_MEAN`` (its length is the input channel
count), ``MODEL.MOBILENET``, ``MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE}``,
``MODEL.FCOS.TOP_LEVELS``, and per backbone ``MODEL.VOVNET.{CONV_BODY, OUT_FEATURES, NORM,
STAGE_WITH_DCN, WITH_MODULATED_DCN, DEFORMABLE_GROUPS}`` or ``MODEL.RESNETS.{DEPTH,
OUT_FEATURES, NUM_GROUPS, WIDTH_PER_GROUP, NORM, STRIDE_IN_1X1, RES5_DILATION,
RES2_OUT_CHANNELS, STEM_OUT_CHANNELS, DEFORM_ON_PER_STAGE, DEFORM_MODULATED, DEFORM_NUM_GROUPS}``
(MobileNetV2 reads ``MODEL.RESNETS.OUT_FEATURES``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from .base import Backbone
from .fpn import FPN
from .mobilenet import MobileNetV2
from .resnet import ResNet
from .vovnet import VoVNet

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_BUILDERS",
    "build_backbone",
    "build_fcos_vovnet_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
    "build_fcos_mobilenetv2_fpn_backbone",
]


def build_fcos_vovnet_fpn_backbone(cfg: Any) -> FPN:
    """VoVNet (``MODEL.VOVNET``) + FPN + FCOS top block."""
    return FPN.from_config(cfg, VoVNet.from_config(cfg))


def build_fcos_resnet_fpn_backbone(cfg: Any) -> FPN:
    """ResNet (``MODEL.RESNETS``) + FPN + FCOS top block; MobileNetV2 if ``MODEL.MOBILENET``.

    Upstream's version of the MobileNet branch raises NameError (``build_mnv2_backbone`` is
    not imported in its ``fpn.py``); here it builds the same network as
    :func:`build_fcos_mobilenetv2_fpn_backbone`.
    """
    if cfg.MODEL.MOBILENET:
        bottom_up: Backbone = MobileNetV2.from_config(cfg)
    else:
        bottom_up = ResNet.from_config(cfg)
    return FPN.from_config(cfg, bottom_up)


def build_fcos_mobilenetv2_fpn_backbone(cfg: Any) -> FPN:
    """MobileNetV2 + FPN + FCOS top block."""
    return FPN.from_config(cfg, MobileNetV2.from_config(cfg))


BACKBONE_BUILDERS: dict[str, Callable[[Any], Backbone]] = {
    "build_fcos_vovnet_fpn_backbone": build_fcos_vovnet_fpn_backbone,
    "build_fcos_resnet_fpn_backbone": build_fcos_resnet_fpn_backbone,
    "build_fcos_mobilenetv2_fpn_backbone": build_fcos_mobilenetv2_fpn_backbone,
}


def build_backbone(cfg: Any) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME``.

    Args:
        cfg: attribute-accessible config (see the module docstring for the keys read).

    Returns:
        The backbone (an :class:`FPN`), in training mode like any new module; call ``.eval()``
        before inference when the config uses ``"BN"`` norms.

    Raises:
        ValueError: unknown backbone name, or inconsistent settings.
    """
    name = cfg.MODEL.BACKBONE.NAME
    builder = BACKBONE_BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown MODEL.BACKBONE.NAME {name!r}; supported: {', '.join(BACKBONE_BUILDERS)}")
    backbone = builder(cfg)
    logger.debug("built backbone %s with outputs %s", name, backbone.out_feature_strides)
    return backbone
