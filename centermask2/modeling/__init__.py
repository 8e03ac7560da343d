"""CenterMask2 network in plain PyTorch (inference)."""

from .meta_arch import OUTPUT_NAMES, CenterMask, build_model

__all__ = ["CenterMask", "build_model", "OUTPUT_NAMES"]
