"""The PyTorch model as a :class:`~centermask2.engine.backend.Backend`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..contract import OUTPUT_NAMES, PADDING_MODES
from ..errors import InputError

__all__ = ["TorchBackend", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """``MODEL.DEVICE`` as a torch device; ``cuda`` without a usable GPU falls back to the CPU
    with a warning (detectron2's default config says ``cuda``)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"MODEL.DEVICE={device!r} is not a device; use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available here; running on the CPU (pass MODEL.DEVICE cpu)", device)
        return torch.device("cpu")
    return dev


class TorchBackend:
    """The PyTorch model. Normalization and zero padding happen in :meth:`CenterMask.normalize`.

    Args:
        model: a :class:`~centermask2.modeling.CenterMask`.
        device: where it runs.
        padding: one of :data:`~centermask2.contract.PADDING_MODES`: ``"ignore"`` gives every image
            its own upstream result however much it is padded and whatever shares its batch;
            ``"include"`` lets the padding of the input tensor take part (upstream run on it).
        path: the checkpoint the weights came from (None: built in memory).
    """

    input_dtype = "uint8"
    #: settings live in the config, not in an exported model's metadata
    metadata = None
    #: any batch
    static_batch = None

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        padding: str = "ignore",
        path: str | os.PathLike | None = None,
    ) -> None:
        if padding not in PADDING_MODES:
            raise InputError(f"padding must be one of {', '.join(PADDING_MODES)}, got {padding!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.padding = padding
        self.path = Path(path) if path is not None else None
        self.output_names: list[str] = list(getattr(model, "output_names", OUTPUT_NAMES))

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(inputs["images"])).to(self.device)
        sizes = torch.from_numpy(np.ascontiguousarray(inputs["image_sizes"])).to(self.device)
        # the plain forward is the same, and cheaper, when nothing is padded beyond the divisibility
        ignore = self.padding == "ignore" and self.model.needs_padding_invariance(images, sizes)
        out = self.model(self.model.normalize(images, sizes), sizes, ignore_padding=ignore)
        return {k: v.cpu().numpy() for k, v in out.items()}
