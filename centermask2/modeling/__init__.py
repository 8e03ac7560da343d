"""CenterMask2 network in plain PyTorch (inference)."""

from .meta_arch import OUTPUT_NAMES, CenterMask, build_model
from .panoptic_fpn import PanopticCenterMask

__all__ = ["CenterMask", "PanopticCenterMask", "build_model", "OUTPUT_NAMES"]
