"""Configuration: detectron2-compatible defaults, YAML loading with ``_BASE_``, overrides."""

from .config import (
    BASE_KEY,
    CfgNode,
    ConfigError,
    UnknownConfigKeyError,
    get_cfg,
    load_config,
    load_config_text,
    load_yaml_with_base,
)
from .defaults import default_config_dict

__all__ = [
    "BASE_KEY",
    "CfgNode",
    "ConfigError",
    "UnknownConfigKeyError",
    "default_config_dict",
    "get_cfg",
    "load_config",
    "load_config_text",
    "load_yaml_with_base",
]
