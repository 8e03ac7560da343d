"""Backbones of CenterMask2 (VoVNetV2, ResNet/ResNeXt, MobileNetV2) with FPN, in plain PyTorch.

Their layers (``Conv2d``, ``FrozenBatchNorm2d``, ``DeformConv2d``, ``get_norm``, ...) and the
padding-invariant helpers live in :mod:`centermask2.modeling.layers`."""

from .base import Backbone
from .build import (
    BACKBONE_BUILDERS,
    build_backbone,
    build_fcos_mobilenetv2_fpn_backbone,
    build_fcos_resnet_fpn_backbone,
    build_fcos_vovnet_fpn_backbone,
)
from .fpn import FPN, LastLevelP6, LastLevelP6P7, build_fcos_top_block
from .mobilenet import MobileNetV2, build_mnv2_backbone
from .resnet import ResNet, build_resnet_backbone
from .vovnet import VOVNET_SPECS, VoVNet, VoVNetSpec, build_vovnet_backbone

__all__ = [
    "BACKBONE_BUILDERS",
    "FPN",
    "VOVNET_SPECS",
    "Backbone",
    "LastLevelP6",
    "LastLevelP6P7",
    "MobileNetV2",
    "ResNet",
    "VoVNet",
    "VoVNetSpec",
    "build_backbone",
    "build_fcos_mobilenetv2_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
    "build_fcos_top_block",
    "build_fcos_vovnet_fpn_backbone",
    "build_mnv2_backbone",
    "build_resnet_backbone",
    "build_vovnet_backbone",
]
