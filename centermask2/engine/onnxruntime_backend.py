"""An exported ``.onnx`` in ONNX Runtime as a :class:`~centermask2.engine.backend.Backend`.

Imports neither torch nor the model: the model's metadata (:mod:`centermask2.contract`) gives
every setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..contract import OUTPUT_NAMES, read_metadata
from ..errors import BackendError, InputError, MissingDependencyError
from .backend import fill_static_batch

__all__ = ["OnnxRuntimeBackend", "PROVIDERS"]

logger = logging.getLogger(__name__)

#: ``--provider`` choices and the ONNX Runtime execution providers they ask for, in order.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend:
    """An exported ``.onnx`` model in ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file (its metadata says shapes and dtype).
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    def __init__(self, model_path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("ONNX Runtime is not installed: pip install onnxruntime") from None

        self.path = Path(model_path)
        self.metadata = read_metadata(self.path)
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
            raise BackendError(f"ONNX Runtime cannot load {str(self.path)!r}: {exc}") from None
        self.input_dtype = self.metadata.input_dtype
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._check_input_shape()
        if list(self.output_names) != list(OUTPUT_NAMES):
            raise InputError(f"{str(self.path)!r} outputs {self.output_names}, expected {list(OUTPUT_NAMES)}")

    def _check_input_shape(self) -> None:
        """The graph's ``images`` input must agree with what the metadata says (static size, batch)."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "images" not in inputs or "image_sizes" not in inputs:
            raise InputError(f"{str(self.path)!r} has inputs {sorted(inputs)}, expected ['image_sizes', 'images']")
        dims = [d if isinstance(d, int) else None for d in inputs["images"].shape]
        meta = self.metadata
        if meta.dynamic or len(dims) != 4:
            return
        want = [meta.batch_size, 3, *(meta.input_size or (None, None))]
        if any(d is not None and w is not None and d != w for d, w in zip(dims, want)):
            raise InputError(
                f"{str(self.path)!r}: its metadata says input {want} but the graph takes {dims}; the metadata was "
                "edited or belongs to another model: re-export it with convert_model_into_onnx.py"
            )

    @property
    def static_batch(self) -> int | None:
        """The batch size a static model requires, None for a dynamic one."""
        return None if self.metadata.dynamic else self.metadata.batch_size

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["images"].astype(np.dtype(self.input_dtype), copy=False)
        sizes = inputs["image_sizes"].astype(np.int64, copy=False)
        b = images.shape[0]
        images, sizes = fill_static_batch(images, sizes, self.static_batch)
        try:
            outs: Sequence[np.ndarray] = self.session.run(self.output_names, {"images": images, "image_sizes": sizes})
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types are not RuntimeError
            raise BackendError(
                f"ONNX Runtime failed running {str(self.path)!r} on input {list(images.shape)} {images.dtype}: {exc}"
            ) from None
        return {name: value[:b] for name, value in zip(self.output_names, outs)}
