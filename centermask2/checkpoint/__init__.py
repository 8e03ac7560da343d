"""Checkpoints: safe reading of detectron2 ``.pth`` / ``.pkl`` files, loading into the model,
and checkpoints stored as recipes (the bundled sample and the golden test cases)."""

from .loader import (
    LoadReport,
    UnsafeCheckpointError,
    apply_state_dict,
    check_weights_path,
    checkpoint_size_limit,
    load_state_dict_file,
    load_weights,
    read_checkpoint,
)
from .recipe import recipe_arrays, write_checkpoint

__all__ = [
    "LoadReport",
    "UnsafeCheckpointError",
    "apply_state_dict",
    "check_weights_path",
    "checkpoint_size_limit",
    "load_state_dict_file",
    "load_weights",
    "read_checkpoint",
    "recipe_arrays",
    "write_checkpoint",
]
