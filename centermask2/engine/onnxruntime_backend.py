"""An exported ``.onnx`` in ONNX Runtime as a :class:`~centermask2.engine.backend.Backend`.

Imports neither torch nor the model: the model's metadata (:mod:`centermask2.contract`) gives
every setting.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import BackendError, InputError, MissingDependencyError
from .backend import OnnxFileBackend

__all__ = ["OnnxRuntimeBackend", "PROVIDERS"]

logger = logging.getLogger(__name__)

#: ``--provider`` choices and the ONNX Runtime execution providers they ask for, in order.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(OnnxFileBackend):
    """An exported ``.onnx`` model in ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file (its metadata says shapes and dtype).
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    runtime = "ONNX Runtime"

    def __init__(self, model_path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("ONNX Runtime is not installed: pip install onnxruntime") from exc

        super().__init__(model_path)
        if provider not in PROVIDERS:
            raise InputError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        wanted = PROVIDERS[provider]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            hint = "pip install onnxruntime-gpu (and a matching CUDA)" if provider != "cpu" else ""
            raise BackendError(
                f"ONNX Runtime provider {wanted[0]!r} is not available here (available: {', '.join(available)}); "
                f"use --provider cpu{' or ' + hint if hint else ''}"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=[p for p in wanted if p in available])
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types are not RuntimeError
            raise BackendError(f"ONNX Runtime cannot load {str(self.path)!r}: {exc}") from exc
        self._check_graph(
            {i.name: [d if isinstance(d, int) else None for d in i.shape] for i in self.session.get_inputs()},
            [o.name for o in self.session.get_outputs()],
        )

    def _infer(self, images: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outs = self.session.run(self.output_names, {"images": images, "image_sizes": sizes})
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types are not RuntimeError
            raise BackendError(
                f"ONNX Runtime failed running {str(self.path)!r} on input {list(images.shape)} {images.dtype}: {exc}"
            ) from exc
        return dict(zip(self.output_names, outs))
