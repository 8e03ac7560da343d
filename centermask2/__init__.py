"""CenterMask2 deployment toolkit: the model in plain PyTorch plus the stages around it."""

__version__ = "0.1.0"
