"""How close a model runs to what the CPU can do: matrix-product peaks and a model's work.

A model's *floor* at a precision is its multiply-accumulates (MACs) divided by the CPU's peak
rate at that precision; a runtime's latency against that floor says how much is left:

* :func:`count_macs` counts the MACs of a model's convolutions and linear layers at an input
  size, by running the PyTorch network once with hooks (the ROI heads' layers at the rows they
  really run; element-wise work is not counted: it is memory-bound);
* :func:`matmul_peaks` measures this machine's peak per precision (``fp32``, ``bf16``, ``int8``)
  as the best rate of a large matrix product in ONNX Runtime and OpenVINO with the same threads
  (the runtimes that run the exported models; int8 as a QuantizeLinear / DequantizeLinear graph,
  the form ``tools/quantize.py`` writes, which both runtimes run with their int8 kernels).

These are hardware measurements, not models of the toolkit: the matrix product graphs are opened
with the runtimes directly, not through :func:`~centermask2.engine.open_model` (they have no
metadata).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["MacCount", "Peak", "count_macs", "matmul_peaks", "floor_fraction", "PRECISION_OF_ROW"]

logger = logging.getLogger(__name__)

#: the precision whose peak bounds a benchmark row, by the row's precision label prefix
PRECISION_OF_ROW = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp32", "int8": "int8"}


@dataclass
class MacCount:
    """Multiply-accumulates of one forward pass (batch of one).

    Attributes:
        total: all counted layers.
        by_part: per top-level part of the network (``backbone``, ``proposal_generator``, ``roi_heads``,
            ``sem_seg_head``), the same layers.
        layers: how many layer calls were counted.
        input_hw: the padded input size.
    """

    total: int
    by_part: dict[str, int] = field(default_factory=dict)
    layers: int = 0
    input_hw: tuple[int, int] = (0, 0)

    @property
    def gmac(self) -> float:
        return self.total / 1e9


def _layer_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """MACs of one call of a convolution-like or linear layer (0 for anything else)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not torch.is_tensor(output):
        return 0
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.ConvTranspose2d):
        x = inputs[0]
        return x.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
    if weight.dim() == 4 and output.dim() == 4:  # Conv2d and the deformable convolution: out x (in/g * kh * kw)
        return output.numel() * weight[0].numel()
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, height: int, width: int) -> MacCount:
    """The MACs of ``model`` (a :class:`~centermask2.modeling.CenterMask`) on one ``height`` x
    ``width`` input of random pixels (multiples of its size divisibility), padding included (no
    padding masks: a single image at its own size has none).

    Convolutions (including the deformable ones: the products with their weights), transposed
    convolutions and linear layers are counted where they run; each is counted once per call.
    """
    counts: dict[str, int] = {}
    calls = [0]
    handles = []

    def hook(name: str):
        part = name.split(".", 1)[0]

        def count(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            macs = _layer_macs(module, inputs, output)
            if macs:
                counts[part] = counts.get(part, 0) + macs
                calls[0] += 1

        return count

    leaves = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) or type(m).__name__ == "DeformConv2d"]
    for name, module in leaves:
        handles.append(module.register_forward_hook(hook(name)))
    try:
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (1, 3, height, width), generator=gen, dtype=torch.uint8)
        sizes = torch.tensor([[height, width]], dtype=torch.int64)
        model(model.normalize(pixels, sizes), sizes, ignore_padding=False)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return MacCount(sum(counts.values()), dict(sorted(counts.items(), key=lambda kv: -kv[1])), calls[0], (height, width))


@dataclass
class Peak:
    """A precision's best matrix-product rate on this machine.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``int8``.
        gmacs: giga multiply-accumulates per second (None: no runtime here computes in it).
        runtime: which runtime reached it.
        rates: every runtime's rate (GMAC/s), for the record.
        note: why a precision has no figure.
    """

    precision: str
    gmacs: float | None
    runtime: str = ""
    rates: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _matmul_model(path: Path, n: int, int8: bool) -> None:
    """An ONNX model ``y = x @ W`` with x [n, n] float32 input and W [n, n] a constant; with
    ``int8``, x and W pass through QuantizeLinear / DequantizeLinear (uint8 activations, int8
    weights: the QDQ form of ``tools/quantize.py``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if int8:
        w = rng.integers(-127, 128, size=(n, n), dtype=np.int8)
        inits += [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
                  numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "x_zero")]
        nodes += [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
                  helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
                  helper.make_node("MatMul", ["x_dq", "w"], ["y"])]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _best_seconds(call: Any, runs: int) -> float:
    """The fastest of ``runs`` calls after one warm-up (:func:`~centermask2.benchmark.measure`)."""
    from .benchmark import measure

    return min(measure({"call": call}, runs=runs, warmup=1)["call"])


def _onnxruntime_rate(path: Path, x: np.ndarray, threads: int | None, runs: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    return x.shape[0] ** 3 / _best_seconds(lambda: session.run(None, {"x": x}), runs) / 1e9


def _openvino_rate(path: Path, x: np.ndarray, threads: int | None, runs: int, precision: str) -> tuple[float, str]:
    """OpenVINO's rate, and the precision it says it computed in."""
    import openvino as ov

    from .engine.openvino_backend import PRECISIONS

    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISIONS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(os.fspath(path), "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    used = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    request = compiled.create_infer_request()
    rate = x.shape[0] ** 3 / _best_seconds(lambda: request.infer({0: x}), runs) / 1e9
    return rate, {v: k for k, v in PRECISIONS.items()}.get(used, used)


def matmul_peaks(
    threads: int | None = None,
    precisions: Sequence[str] = ("fp32", "bf16", "int8"),
    size: int = 2048,
    runs: int = 5,
) -> dict[str, Peak]:
    """This machine's best rate of a ``size`` x ``size`` x ``size`` matrix product per precision,
    in ONNX Runtime and OpenVINO (when installed) with ``threads`` threads; the best of ``runs``
    calls after one warm-up. bf16 is OpenVINO's alone (ONNX Runtime has no bf16 on x86 CPUs) and
    has no figure on a CPU without it (OpenVINO then computes fp32, and the peak says so)."""
    import importlib.util

    has_ov = importlib.util.find_spec("openvino") is not None
    x = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    peaks: dict[str, Peak] = {}
    with tempfile.TemporaryDirectory(prefix="roofline_") as tmp:
        for precision in precisions:
            rates: dict[str, float] = {}
            note = ""
            path = Path(tmp) / f"{precision}.onnx"
            _matmul_model(path, size, int8=precision == "int8")
            if precision in ("fp32", "int8"):
                rates["ONNX Runtime"] = _onnxruntime_rate(path, x, threads, runs)
            if has_ov:
                rate, used = _openvino_rate(path, x, threads, runs, "bf16" if precision == "bf16" else "fp32")
                if precision == "bf16" and used != "bf16":
                    note = f"this CPU has no bf16 (OpenVINO computes {used})"
                else:
                    rates["OpenVINO"] = rate
            elif precision == "bf16":
                note = "needs OpenVINO"
            best = max(rates, key=rates.get) if rates else ""
            peaks[precision] = Peak(precision, rates[best] if best else None, best, rates, note)
            logger.info("matmul peak %s: %s", precision, rates or note)
    return peaks


def floor_fraction(latency_s: float, macs: int, peak: Peak | None) -> float | None:
    """The share of ``peak`` a run of ``latency_s`` seconds reaches: the floor (``macs`` at the
    peak rate) over the latency; None when the precision has no peak."""
    if peak is None or not peak.gmacs or latency_s <= 0:
        return None
    return macs / (peak.gmacs * 1e9) / latency_s
