#!/usr/bin/env python3
"""What padding invariance costs: a static model that ignores its padding vs one that includes it.

    python tools/benchmark_padding.py [--case V_39] [--size 1344x1344] [--runs 5] [--warmup 1] [--threads 2] \\
        [--onnx IGNORE.onnx INCLUDE.onnx] [--golden tests/data]

PyTorch eager runs the golden case's model (``golden_<case>`` under ``--golden``, by default the
repository's ``tests/data``) on its first image padded to ``--size``, opened with ``padding``
``"ignore"`` and ``"include"``; with ``--onnx``, two static exports of the same size
(``--static-padding ignore`` first, then ``include``) run in ONNX Runtime on the same input.
Everything is interleaved in this one process with the same threads
(:func:`centermask2.benchmark.measure`); medians and the ignore / include ratios are printed. It
is a script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path

MODES = ("ignore", "include")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="V_39", help="golden case, golden_<case> under --golden (default V_39)")
    p.add_argument("--size", default="1344x1344", help="padded input HxW (default 1344x1344)")
    add_timing_arguments(p)
    p.add_argument("--onnx", nargs=2, metavar=("IGNORE", "INCLUDE"), help="static exports to time in ONNX Runtime")
    p.add_argument("--golden", default=str(ROOT / "tests" / "data"),
                   help="folder holding the golden cases (default: the repository's tests/data)")
    args = p.parse_args(argv)

    from centermask2.benchmark import (
        backend_candidates,
        header,
        image_batch,
        measure,
        open_golden,
        set_threads,
        summarize,
        timing_table,
    )
    from centermask2.data import parse_hw
    from centermask2.engine.sources import open_model

    set_threads(args.threads)
    size = parse_hw(args.size)
    case_dir = Path(args.golden) / f"golden_{args.case}"
    info = json.loads((case_dir / "case.json").read_text())
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            sources[f"torch {mode}"] = open_golden(case_dir, ROOT / "configs" / "centermask", tmp,
                                                   threads=args.threads, padding=mode)
    if args.onnx:
        for mode, path in zip(MODES, args.onnx):
            source = open_model(path, "onnxruntime", threads=args.threads)
            if source.backend.metadata.input_size is not None and tuple(source.backend.metadata.input_size) != size:
                p.error(f"{path} is static {source.backend.metadata.input_size}; --size must match")
            sources[f"onnxruntime {mode}"] = source
    image_path = case_dir / "images" / sorted(info["num_detections"])[0]
    images, sizes = image_batch(image_path, sources["torch ignore"], size)
    times = measure(backend_candidates(sources, images, sizes), runs=args.runs, warmup=args.warmup)
    stats = summarize(times)
    print(header(threads=args.threads, runs=args.runs, warmup=args.warmup, input_shape=images.shape,
                 notes=[f"{args.case}: image {sizes[0, 0]}x{sizes[0, 1]} ({image_path.name}) padded to {size[0]}x{size[1]}"]))
    print(timing_table(times))
    for runtime in ("torch", "onnxruntime"):
        if f"{runtime} ignore" in stats:
            ratio = stats[f"{runtime} ignore"].median / stats[f"{runtime} include"].median
            print(f"{runtime}: ignore / include = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
