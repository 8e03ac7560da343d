"""The benchmarks' one harness: interleaved rounds, medians, one header, one table.

Every benchmark script (``tools/benchmark.py`` and the ``tools/benchmark_*.py`` on it) times its
candidates with :func:`measure`: each round runs every candidate once, in turn, so a machine that
slows down or speeds up during the measurement affects them all alike; the first ``warmup`` rounds
are not recorded. :func:`header` names the machine (:func:`~centermask2.cpu.cpu_description`), the
software, the threads, the input and the rounds; :func:`format_table` prints the figures as a
Markdown table (pasteable into the README). Models are opened through
:func:`~centermask2.engine.sources.open_model` (:func:`runtime_targets` lists the runtimes and
precisions of one model, :func:`open_target` opens one) and fed through their backend's ``run``,
so every runtime is timed on the same call: raw pixels in, padded outputs out.

    times = measure({"a": fn_a, "b": fn_b}, runs=5, warmup=1)
    print(header(threads=2, input_shape=(1, 3, 800, 1216), runs=5, warmup=1))
    print(timing_table(times, baseline="a"))
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .cpu import cpu_description
from .errors import InputError

if TYPE_CHECKING:
    from .engine.sources import ModelSource

__all__ = [
    "Timing",
    "measure",
    "summarize",
    "format_table",
    "timing_table",
    "header",
    "set_threads",
    "Target",
    "runtime_targets",
    "open_target",
    "model_inputs",
    "random_batch",
    "image_batch",
    "coco_ap",
    "stream_rate",
    "model_macs",
]


# ---------------------------------------------------------------------------------------- timing


def add_timing_arguments(parser: Any, *, runs: int = 5, warmup: int = 1, threads: int | None = 2) -> None:
    """The options every benchmark script takes: ``--runs``, ``--warmup`` and (unless ``threads`` is
    None) ``--threads``, with these defaults."""
    parser.add_argument("--runs", type=int, default=runs, help=f"recorded rounds (default {runs})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"rounds run first and not recorded (default {warmup})")
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads, help=f"CPU threads of every runtime (default {threads})")


def measure(
    candidates: Mapping[str, Callable[[], Any]],
    runs: int = 5,
    warmup: int = 1,
    *,
    before: Callable[[str], Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time each candidate ``runs`` times, interleaved: round ``r`` calls every candidate once, in
    the mapping's order; the first ``warmup`` rounds are not recorded.

    Args:
        candidates: name -> a call with no arguments (its result is ignored).
        runs: recorded rounds (>= 1).
        warmup: rounds run first and not recorded (>= 0).
        before: called with the candidate's name before each call, outside the timed span (e.g. to
            remove the previous call's output folder).
        clock: seconds (default :func:`time.perf_counter`).

    Returns:
        name -> the ``runs`` durations in seconds, in round order.
    """
    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise InputError(f"warmup must be >= 0, got {warmup}")
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(warmup + runs):
        for name, call in candidates.items():
            if before is not None:
                before(name)
            start = clock()
            call()
            elapsed = clock() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


@dataclass(frozen=True)
class Timing:
    """One candidate's recorded durations (seconds) and their median, min and max."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def min(self) -> float:
        return float(min(self.times))

    @property
    def max(self) -> float:
        return float(max(self.times))

    @property
    def runs(self) -> int:
        return len(self.times)


def summarize(times: Mapping[str, Sequence[float]]) -> dict[str, Timing]:
    """:func:`measure`'s durations as :class:`Timing` per candidate."""
    return {name: Timing(tuple(values)) for name, values in times.items()}


# ---------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.2f}"
    return str(value)


def _is_number(text: str) -> bool:
    text = text.split(" ", 1)[0].rstrip("x%")
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown (pipe) table: strings as given, floats with 2 decimals, None as ``-``; columns
    whose cells are all numbers (or ``-``) right-aligned, the others left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise InputError(f"every row needs {len(headers)} cells ({', '.join(headers)})")
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [bool(cells) and all(row[i] == "-" or _is_number(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join(("-" * (w + 1) + ":") if right else ("-" * (w + 2))
                            for w, right in zip(widths, numeric)) + "|"]
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) if right else c.ljust(w)
                                       for c, w, right in zip(row, widths, numeric)) + " |")
    return "\n".join(lines)


def ms(seconds: float) -> str:
    """Milliseconds with one decimal."""
    return f"{1000 * seconds:.1f}"


def timing_table(
    times: Mapping[str, Sequence[float]],
    baseline: str | None = None,
    *,
    name: str = "candidate",
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The usual table of :func:`measure`'s result: median, min and max in ms per candidate, and
    the median's ratio to ``baseline``'s (a candidate's name) when given; ``extra`` adds columns
    (column -> candidate -> value, missing values shown as ``-``)."""
    stats = summarize(times)
    if baseline is not None and baseline not in stats:
        raise InputError(f"baseline {baseline!r} is not one of the candidates ({', '.join(stats)})")
    extra = extra or {}
    headers = [name, "median ms", "min ms", "max ms"]
    if baseline is not None:
        headers.append(f"x {baseline}")
    headers += list(extra)
    rows = []
    for key, t in stats.items():
        row: list[Any] = [key, ms(t.median), ms(t.min), ms(t.max)]
        if baseline is not None:
            row.append(f"{t.median / stats[baseline].median:.2f}")
        row += [column.get(key) for column in extra.values()]
        rows.append(row)
    return format_table(headers, rows)


def _versions() -> str:
    """Python and the versions of the runtimes this process has imported."""
    parts = [f"Python {platform.python_version()}"]
    for module in ("torch", "onnxruntime", "openvino"):
        if module in sys.modules:
            version = str(getattr(sys.modules[module], "__version__", "?")).split("-", 1)[0]
            parts.append(f"{module} {version}")
    return ", ".join(parts)


def header(
    *,
    threads: int | None,
    runs: int | None = None,
    warmup: int | None = None,
    input_shape: Sequence[int] | str | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The lines every benchmark prints first: the machine (:func:`~centermask2.cpu.cpu_description`
    and its CPU count), the software, the threads, the input, the rounds, then ``notes``."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    lines = [f"machine: {cpu_description()}, {os.cpu_count()} CPU(s)", f"software: {_versions()}"]
    setting = [f"threads: {threads}"]
    if input_shape is not None:
        setting.append(f"input: {input_shape if isinstance(input_shape, str) else 'x'.join(map(str, input_shape))}")
    if runs is not None:
        setting.append(f"runs: {runs} interleaved rounds after {warmup or 0} warm-up (median, min, max)")
    lines.append("  ".join(setting))
    return "\n".join([*lines, *notes])


def set_threads(threads: int | None) -> None:
    """The same number of CPU threads for PyTorch as the models are opened with (None: leave as is)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- models


@dataclass
class Target:
    """One row of a runtime benchmark: a model opened in one runtime at one precision.

    Attributes:
        runtime: ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` (:data:`~centermask2.engine.sources.RUNTIMES`).
        model: the config YAML (torch) or the ``.onnx``.
        precision: what it computes in (``fp32``, ``int8``, ``bf16``, ``int8, rest bf16``, ...); for
            OpenVINO :func:`open_target` replaces it with what it really ran.
        options: :func:`~centermask2.engine.sources.open_model`'s keyword arguments.
        float32: a float32 model in float32 (an accuracy reference).
        ran: for OpenVINO, the precision it reported running in (:func:`open_target` sets it).
    """

    runtime: str
    model: str
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    float32: bool = True
    ran: str | None = None

    @property
    def peak_precision(self) -> str:
        """The precision whose matrix-product peak bounds this row: int8 for int8 models; for
        OpenVINO what it ran (bf16 only where the CPU computes bf16); else fp32."""
        if self.precision.startswith("int8"):
            return "int8"
        if self.runtime == "openvino":
            return self.ran or self.options.get("precision", "fp32")
        return "fp32"

    @property
    def label(self) -> str:
        runtime = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[self.runtime]
        return f"{runtime} {self.precision}"


def runtime_targets(
    *,
    config: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
    onnx: str | os.PathLike | None = None,
    int8: str | os.PathLike | None = None,
    openvino: Sequence[str] | None = None,
    threads: int | None = None,
    provider: str = "cpu",
    requests: int = 1,
) -> list[Target]:
    """The runtimes and precisions of one model: PyTorch eager (``config``, weights in ``opts``),
    ONNX Runtime on the export (``onnx``) and its int8 model (``int8``, ``tools/quantize.py``), and
    with ``openvino`` (precisions, default ``["fp32"]`` when given empty) OpenVINO on each at each
    precision (for the int8 model: what its float layers compute in); with ``requests`` other than
    1, each OpenVINO row again in OpenVINO's throughput mode with that many infer requests (0: its
    choice)."""
    targets: list[Target] = []
    if config is not None:
        targets.append(Target("torch", os.fspath(config), options={"opts": list(opts), "threads": threads}))
    precisions = list(openvino or ["fp32"]) if openvino is not None else []
    if onnx is not None:
        targets.append(Target("onnxruntime", os.fspath(onnx), options={"provider": provider, "threads": threads}))
        targets += [Target("openvino", os.fspath(onnx), p, {"precision": p, "threads": threads, "cache_dir": ""},
                           float32=p == "fp32") for p in precisions]
    if int8 is not None:
        targets.append(Target("onnxruntime", os.fspath(int8), "int8", {"provider": provider, "threads": threads},
                              float32=False))
        targets += [Target("openvino", os.fspath(int8), "int8" if p == "fp32" else f"int8, rest {p}",
                           {"precision": p, "threads": threads, "cache_dir": ""}, float32=False) for p in precisions]
    if requests != 1:
        many = "OpenVINO's choice of" if requests == 0 else str(requests)
        targets += [Target("openvino", t.model, f"{t.precision}, {many} requests", {**t.options, "requests": requests},
                           float32=False) for t in list(targets) if t.runtime == "openvino"]
    return targets


def open_target(target: Target) -> ModelSource:
    """Open ``target`` through :func:`~centermask2.engine.sources.open_model`; an OpenVINO target's
    ``precision`` then says what OpenVINO really runs (bf16 falls back to fp32 on CPUs without
    it), and an int8 target must be a quantized model."""
    from .engine.sources import open_model

    source = open_model(target.model, target.runtime, **target.options)
    meta = source.backend.metadata
    if not target.float32 and target.precision.startswith("int8") and meta is not None and not meta.quantization:
        raise InputError(f"{target.model} is not a quantized model (tools/quantize.py writes one)")
    used = getattr(source.backend, "precision_used", None)
    if target.runtime == "openvino" and used and used != "unknown":
        target.ran = used
        if used != target.options.get("precision"):
            target.precision += f" (ran {used})"
    return source


def open_golden(case_dir: str | os.PathLike, configs_dir: str | os.PathLike, weights_dir: str | os.PathLike,
                **options: Any) -> ModelSource:
    """The PyTorch model of a golden case folder (``case.json`` + its weights recipe) on the CPU,
    its checkpoint written into ``weights_dir``; ``options`` as :func:`~centermask2.engine.open_model`'s."""
    import json
    from pathlib import Path

    from .checkpoint import write_checkpoint
    from .engine.sources import open_model

    case_dir = Path(case_dir)
    config = Path(configs_dir) / json.loads((case_dir / "case.json").read_text())["config"]
    weights = write_checkpoint(case_dir, Path(weights_dir) / f"{case_dir.name}.pth")
    opts = ["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu", *options.pop("opts", ())]
    return open_model(config, "torch", opts=opts, **options)


def backend_candidates(sources: Mapping[str, ModelSource], images: np.ndarray, sizes: np.ndarray) -> dict[str, Callable[[], Any]]:
    """:func:`measure`'s candidates: one model call per source on the same input (fed in its dtype)."""
    candidates = {}
    for name, source in sources.items():
        feed = model_inputs(source, images, sizes)
        candidates[name] = lambda backend=source.backend, feed=feed: backend.run(feed)
    return candidates


def random_batch(height: int, width: int, batch: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 pixels [B, 3, H, W] filling the whole input, and their sizes int64 [B, 2]."""
    images = np.random.default_rng(seed).integers(0, 256, size=(batch, 3, height, width), dtype=np.uint8)
    return images, np.tile(np.array([[height, width]], dtype=np.int64), (batch, 1))


def image_batch(path: str | os.PathLike, source: ModelSource, pad_to: tuple[int, int],
                batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One image resized by ``source``'s rule, padded to ``pad_to``, ``batch`` times."""
    from dataclasses import replace

    from .data import load_and_resize, pad_batch

    spec = replace(source.spec, pad_to=tuple(pad_to))
    image, _ = load_and_resize(path, spec)
    return pad_batch([image] * batch, spec)


def model_inputs(source: ModelSource, images: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """``backend.run``'s inputs in the dtype the model takes."""
    return {"images": images.astype(source.backend.input_dtype, copy=False), "image_sizes": sizes}


def coco_ap(source: ModelSource, images_dir: str | os.PathLike, coco_json: str | os.PathLike) -> dict[str, float]:
    """bbox and segm AP of ``source`` on a COCO dataset: every image through
    :func:`~centermask2.engine.loop.run_inference` (the source's own resize and padding, the
    annotation file's category ids), scored by :func:`~centermask2.evaluation.evaluate_coco`."""
    from .data import category_mapping, list_images
    from .engine.loop import run_inference
    from .evaluation import evaluate_coco

    records = list_images(images_dir, coco_json)
    ids, _ = category_mapping(coco_json, len(source.category_ids))
    results, _summary = run_inference(source, records, ids, progress=False)
    metrics = evaluate_coco(results, coco_json)
    return {task: metrics[task]["AP"] for task in ("bbox", "segm") if task in metrics}


# ---------------------------------------------------------------------------------------- rates


def stream_rate(source: ModelSource, feed: Mapping[str, np.ndarray], calls: int) -> float:
    """Images per second of ``calls`` model calls on ``feed`` through the in-process executor (as a
    folder runs: as many calls at once as the backend allows, e.g. OpenVINO's throughput mode)."""
    from .engine.executors import Job, LocalExecutor

    class _Call(Job):
        def infer(self, backend: Any, prepared: Any) -> Any:
            return backend.run(feed)

    images = int(next(iter(feed.values())).shape[0])
    start = time.perf_counter()
    for _ in LocalExecutor().map(_Call(), list(range(calls)), source):
        pass
    return calls * images / (time.perf_counter() - start)


def model_macs(source: ModelSource, height: int, width: int) -> Any:
    """:func:`~centermask2.roofline.count_macs` of ``source``'s network (its config: the PyTorch
    model's own, or the one an export carries) at ``height`` x ``width``."""
    from .config import load_config_text
    from .modeling import build_model
    from .roofline import count_macs

    model = getattr(source.backend, "model", None)
    if model is None:
        cfg = load_config_text(source.config_yaml, f"the config in {source.model_file or source.label}",
                               ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
        model = build_model(cfg)
    return count_macs(model, height, width)
