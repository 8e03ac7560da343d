"""Backends behind one interface: ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``.

Inputs are ``images`` np.ndarray[B, 3, H, W] (raw pixels in the model's input dtype, padded
bottom/right) and ``image_sizes`` np.ndarray[B, 2] int64; outputs are
:data:`centermask2.modeling.OUTPUT_NAMES`. PyTorch and ONNX Runtime look alike to the stages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .modeling import OUTPUT_NAMES

__all__ = ["TorchBackend", "OnnxRuntimeBackend", "resolve_device", "PROVIDERS"]

logger = logging.getLogger(__name__)

#: ``--provider`` choices and the ONNX Runtime execution providers they ask for, in order.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``MODEL.DEVICE`` as a torch device; ``cuda`` without a usable GPU falls back to the CPU
    with a warning (detectron2's default config says ``cuda``)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"MODEL.DEVICE={device!r} is not a device; use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available here; running on the CPU (pass MODEL.DEVICE cpu)", device)
        return torch.device("cpu")
    return dev


class TorchBackend:
    """The PyTorch model. Normalization and zero padding happen in :meth:`CenterMask.normalize`."""

    input_dtype = "uint8"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(inputs["images"])).to(self.device)
        sizes = torch.from_numpy(np.ascontiguousarray(inputs["image_sizes"])).to(self.device)
        out = self.model(self.model.normalize(images, sizes), sizes)
        return {k: v.cpu().numpy() for k, v in out.items()}


class OnnxRuntimeBackend:
    """An exported ``.onnx`` model in ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file (its metadata says shapes and dtype).
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    def __init__(self, model_path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        from .export.onnx import read_metadata

        self.path = Path(model_path)
        self.metadata = read_metadata(self.path)
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        wanted = PROVIDERS[provider]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            hint = "pip install onnxruntime-gpu (and a matching CUDA)" if provider != "cpu" else ""
            raise ValueError(
                f"ONNX Runtime provider {wanted[0]!r} is not available here (available: {', '.join(available)}); "
                f"use --provider cpu{' or ' + hint if hint else ''}"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=[p for p in wanted if p in available])
        self.input_dtype = self.metadata.input_dtype
        self.output_names = [o.name for o in self.session.get_outputs()]
        if list(self.output_names) != list(OUTPUT_NAMES):
            raise ValueError(f"{str(self.path)!r} outputs {self.output_names}, expected {list(OUTPUT_NAMES)}")

    @property
    def static_batch(self) -> int | None:
        """The batch size a static model requires, None for a dynamic one."""
        return None if self.metadata.dynamic else self.metadata.batch_size

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["images"].astype(np.dtype(self.input_dtype), copy=False)
        sizes = inputs["image_sizes"].astype(np.int64, copy=False)
        b = images.shape[0]
        static = self.static_batch
        if static is not None and b != static:
            if b > static:
                raise ValueError(f"this static model takes batches of {static}, got {b}")
            # fill a short last batch with copies of its first image; their outputs are dropped
            fill = static - b
            images = np.concatenate([images, np.repeat(images[:1], fill, axis=0)])
            sizes = np.concatenate([sizes, np.repeat(sizes[:1], fill, axis=0)])
        outs: Sequence[np.ndarray] = self.session.run(self.output_names, {"images": images, "image_sizes": sizes})
        return {name: value[:b] for name, value in zip(self.output_names, outs)}
