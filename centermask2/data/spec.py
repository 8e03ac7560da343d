"""How images become network input: the resize rule, channel order and padding.

An :class:`InputSpec` comes from exactly one of two places, one constructor each:
:meth:`InputSpec.from_config` (a config, for the PyTorch model or bins made without an exported
model) and :meth:`InputSpec.from_metadata` (what an exported model carries).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from ..contract import ModelMetadata

__all__ = ["InputSpec", "parse_hw"]

logger = logging.getLogger(__name__)


def parse_hw(text: str | None) -> tuple[int, int] | None:
    """Parse ``"HxW"`` (e.g. ``1344x1344``) into (H, W); None stays None.

    Raises:
        InputError: not two positive integers separated by ``x``.
    """
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"size {text!r} is not of the form HxW, e.g. 1344x1344") from None
    if h <= 0 or w <= 0:
        raise InputError(f"size {text!r} must be positive, e.g. 1344x1344")
    return h, w


@dataclass(frozen=True)
class InputSpec:
    """How images become network input.

    Attributes:
        min_size, max_size: ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST`` (ResizeShortestEdge).
        input_format: ``"BGR"`` or ``"RGB"`` (``INPUT.FORMAT``).
        size_divisibility: pad height/width up to a multiple of this.
        pad_to: fixed (H, W) to pad every image to instead (static-shape models), or None.
    """

    min_size: int
    max_size: int
    input_format: str = "BGR"
    size_divisibility: int = 32
    pad_to: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.pad_to is not None:
            h, w = self.pad_to
            d = max(self.size_divisibility, 1)
            if h % d or w % d:
                raise InputError(
                    f"pad size {h}x{w} must be a multiple of the model's size divisibility {d} "
                    f"(e.g. {((h + d - 1) // d) * d}x{((w + d - 1) // d) * d})"
                )
            if max(h, w) < self.min_size:
                logger.warning("pad size %dx%d is smaller than MIN_SIZE_TEST=%d", h, w, self.min_size)

    @classmethod
    def from_config(
        cls, cfg: Any, *, size_divisibility: int | None = None, pad_to: tuple[int, int] | None = None
    ) -> InputSpec:
        """The input rules of a config's model.

        Args:
            cfg: a config from :func:`centermask2.config.load_config`.
            size_divisibility: the built model's (``model.size_divisibility``); when None it is read
                from the config's backbone, built on the ``meta`` device (no weights, no memory).
            pad_to: fixed (H, W), or None for upstream's padding to the size divisibility.
        """
        if size_divisibility is None:
            import torch

            from ..modeling.backbone import build_backbone

            with torch.device("meta"):
                size_divisibility = int(getattr(build_backbone(cfg), "size_divisibility", 0) or 1)
        return cls(
            min_size=int(cfg.INPUT.MIN_SIZE_TEST),
            max_size=int(cfg.INPUT.MAX_SIZE_TEST),
            input_format=str(cfg.INPUT.FORMAT),
            size_divisibility=int(size_divisibility),
            pad_to=pad_to,
        )

    @classmethod
    def from_metadata(cls, meta: ModelMetadata, pad_to: tuple[int, int] | None = None) -> InputSpec:
        """The input rules an exported model carries; ``pad_to`` defaults to a static model's
        input size (None for a dynamic one)."""
        return cls(
            min_size=meta.min_size,
            max_size=meta.max_size,
            input_format=meta.input_format,
            size_divisibility=meta.size_divisibility,
            pad_to=pad_to if pad_to is not None else meta.input_size,
        )
