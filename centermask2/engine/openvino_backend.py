"""An exported ``.onnx`` in OpenVINO as a :class:`~centermask2.engine.backend.Backend`.

OpenVINO reads the toolkit's standard-operator ONNX as is; the model's metadata
(:mod:`centermask2.contract`) gives every setting, as for ONNX Runtime. Imports neither torch
nor the model. An optional extra: ``pip install -e ".[openvino]"``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InputError, MissingDependencyError
from .backend import OnnxFileBackend

__all__ = ["OpenVINOBackend", "OPENVINO_DEVICES", "PRECISIONS"]

logger = logging.getLogger(__name__)

#: ``--device`` choices: OpenVINO's own device names
OPENVINO_DEVICES = ("CPU", "GPU", "AUTO")
#: most ``--requests`` (infer requests at once): far above any CPU's useful number of streams
MAX_REQUESTS = 64
#: ``--precision`` -> OpenVINO's inference precision hint
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _deform_conv(context) -> list:
    """OpenVINO's conversion of ONNX ``DeformConv`` (opset 19, the ``_dcn_`` models), which its
    ONNX frontend lacks: ``DeformableConvolution`` (opset 8) with the modulation mask, and the
    bias, when there is one, added after. The conventions are the same: offsets as (dy, dx) per
    kernel tap with the offset groups outermost, pads as begin (top, left) then end, and bilinear
    samples whose corners fall outside the map counting them as 0 (``bilinear_interpolation_pad``;
    without it OpenVINO would clamp such samples to the border). Golden tests check it against
    upstream's V-39-DCN outputs."""
    import openvino.opset8 as ops

    def given(k: int):
        if k >= context.get_input_size():
            return None
        value = context.get_input(k)
        return None if value.get_node().get_type_name() == "NullNode" else value  # "" in the ONNX node

    pads = [int(p) for p in context.get_attribute("pads", [0, 0, 0, 0])]
    out = ops.deformable_convolution(
        context.get_input(0), context.get_input(2), context.get_input(1),
        strides=[int(v) for v in context.get_attribute("strides", [1, 1])],
        pads_begin=pads[:2], pads_end=pads[2:],
        dilations=[int(v) for v in context.get_attribute("dilations", [1, 1])],
        mask=given(4),
        group=int(context.get_attribute("group", 1)),
        deformable_group=int(context.get_attribute("offset_group", 1)),
        bilinear_interpolation_pad=True,
    )
    bias = given(3)
    if bias is not None:
        out = ops.add(out, ops.reshape(bias, ops.constant(np.array([1, -1, 1, 1], np.int64)), special_zero=False))
    return [out.output(0)]


def default_cache_dir() -> Path:
    """Where compiled models are cached (``$CENTERMASK2_CACHE`` or ``~/.cache/centermask2``)."""
    root = os.environ.get("CENTERMASK2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "centermask2")
    return Path(root) / "openvino"


class OpenVINOBackend(OnnxFileBackend):
    """An exported ``.onnx`` model compiled by OpenVINO.

    Args:
        model_path: the ``.onnx`` file (its metadata says shapes and dtype).
        device: ``"CPU"``, ``"GPU"`` or ``"AUTO"``.
        threads: inference threads (None: OpenVINO's default).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: OpenVINO's inference precision
            hint. Where the device lacks the type (bf16 needs AVX-512 BF16 or AMX on CPUs) OpenVINO
            computes in fp32; ``precision_used`` says what it chose (``"unknown"`` where the
            compiled model does not say, as with ``AUTO``).
        cache_dir: compiled-model cache (second runs start faster); None: :func:`default_cache_dir`;
            ``""``: no cache.
        requests: infer requests that may run at once. 1 (default): OpenVINO's latency hint, one
            call at a time using every thread. More (or 0: OpenVINO's choice for the device): its
            throughput hint, which splits the threads into streams; a stage in this process then runs
            that many calls at once (:class:`~centermask2.engine.executors.LocalExecutor`), more
            images per second on a folder where one call leaves cores idle.
        perf_count: collect OpenVINO's per-layer counters (:meth:`profiling_info`; some overhead,
            for ``tools/profile_openvino.py``).
    """

    runtime = "OpenVINO"

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "CPU",
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        requests: int = 1,
        perf_count: bool = False,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingDependencyError(
                'OpenVINO is not installed: pip install -e ".[openvino]" (or pip install openvino)'
            ) from exc
        if device not in OPENVINO_DEVICES:
            raise InputError(f"OpenVINO device must be one of {list(OPENVINO_DEVICES)}, got {device!r}")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if not 0 <= int(requests) <= MAX_REQUESTS:
            raise InputError(f"--requests must be from 0 (OpenVINO's choice) to {MAX_REQUESTS}, got {requests}")
        super().__init__(model_path)
        from openvino.frontend import ConversionExtension

        core = ov.Core()
        core.add_extension(ConversionExtension("DeformConv", _deform_conv))
        available = list(core.available_devices)
        if device != "AUTO" and not any(d == device or d.startswith(device + ".") for d in available):
            raise BackendError(
                f"OpenVINO device {device!r} is not available here (available: {', '.join(available)}); use --device CPU"
            )
        cache = default_cache_dir() if cache_dir is None else cache_dir
        if cache:
            Path(cache).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": os.fspath(cache)})
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY" if requests == 1 else "THROUGHPUT",
                                     "INFERENCE_PRECISION_HINT": PRECISIONS[precision]}
        if requests > 1:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = int(requests)
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if perf_count:
            config["PERF_COUNT"] = True
        try:
            self.compiled = core.compile_model(os.fspath(self.path), device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeError subclasses of its own
            raise BackendError(f"OpenVINO cannot compile {str(self.path)!r} for {device}: {exc}") from exc
        self.device = device
        #: what OpenVINO computes in, as ``--precision`` names it (``fp32`` where the device lacks
        #: ``precision``); ``"unknown"`` where the compiled model does not say (``AUTO``)
        self.precision_used = "unknown"
        try:
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            name = hint.to_string() if hasattr(hint, "to_string") else str(hint)
            self.precision_used = {v: k for k, v in PRECISIONS.items()}.get(name, name)
        except Exception:  # noqa: BLE001 - AUTO does not report it
            logger.info("OpenVINO on %s does not report the precision it computes in (%s was asked for)", device, precision)
        self._check_graph(
            {next(iter(i.get_names())): [d.get_length() if d.is_static else None for d in i.get_partial_shape()]
             for i in self.compiled.inputs},
            [next(iter(o.get_names())) for o in self.compiled.outputs],
        )
        if requests == 0:
            requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        #: calls that may run at once (one infer request each)
        self.parallel_requests = max(int(requests), 1)
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._dispatch = threading.Lock()
        for _ in range(self.parallel_requests):
            self._requests.put(self.compiled.create_infer_request())
        self._last: Any = None  # the request of the last call that completed
        logger.info("OpenVINO %s on %s, inference precision %s, %d infer request(s)", self.path.name, device,
                    self.precision_used, self.parallel_requests)

    def _infer(self, images: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        request = self._requests.get()  # one free request per call (threads may call at once)
        try:
            # handing inputs to a request (which may reshape its tensors) from two Python threads at
            # once deadlocks OpenVINO's Python layer: one at a time, then wait without the lock
            with self._dispatch:
                request.start_async({"images": images, "image_sizes": sizes})
            request.wait()
            self._last = request
            # the request's tensors are reused by its next call: copy
            return {next(iter(k.get_names())): np.array(v) for k, v in request.results.items()}
        except Exception as exc:  # noqa: BLE001
            raise BackendError(
                f"OpenVINO failed running {str(self.path)!r} on input {list(images.shape)} {images.dtype}: {exc}"
            ) from exc
        finally:
            self._requests.put(request)

    def profiling_info(self) -> list[Any]:
        """OpenVINO's per-layer counters (``ProfilingInfo``: node name and type, kernel, status,
        time) of the last call; the backend must be opened with ``perf_count=True``."""
        if self._last is None:
            raise BackendError("no call has run yet: run the model before reading its counters")
        return list(self._last.get_profiling_info())
