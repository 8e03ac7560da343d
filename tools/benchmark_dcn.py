#!/usr/bin/env python3
"""What deformable convolution costs: V-39 vs V-39-DCN, PyTorch eager and ONNX Runtime.

    python tools/benchmark_dcn.py [--size 800x1216] [--runs 5] [--warmup 1] [--threads 2] \\
        [--onnx V_39.onnx V_39_dcn.onnx] [--golden tests/data]

Both models run in this one process on the same synthetic image, interleaved (plain, DCN,
plain, DCN, ...), with the same number of threads (:func:`centermask2.benchmark.measure`); medians
are printed. The weights are the golden cases' (``golden_V_39``, ``golden_V_39_dcn`` under
``--golden``, by default the repository's ``tests/data``), so the detection heads see realistic
numbers of candidates. With ``--onnx``, two exported dynamic models (plain first) are timed in ONNX
Runtime the same way. It is a script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path

CASES = ("V_39", "V_39_dcn")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="800x1216", help="padded input HxW (default 800x1216)")
    add_timing_arguments(p)
    p.add_argument("--onnx", nargs=2, metavar=("PLAIN", "DCN"), help="exported dynamic models to time in ONNX Runtime")
    p.add_argument("--golden", default=str(ROOT / "tests" / "data"),
                   help="folder holding golden_V_39 and golden_V_39_dcn (default: the repository's tests/data)")
    args = p.parse_args(argv)

    from centermask2.benchmark import (
        backend_candidates,
        header,
        measure,
        open_golden,
        random_batch,
        set_threads,
        summarize,
        timing_table,
    )
    from centermask2.data import parse_hw
    from centermask2.engine.sources import open_model

    set_threads(args.threads)
    h, w = parse_hw(args.size)
    images, sizes = random_batch(h, w)
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            case_dir = Path(args.golden) / f"golden_{case}"
            sources[f"torch {case}"] = open_golden(case_dir, ROOT / "configs" / "centermask", tmp, threads=args.threads)
            if args.onnx:
                path = args.onnx[CASES.index(case)]
                sources[f"onnxruntime {case}"] = open_model(path, "onnxruntime", threads=args.threads)
    order = [f"{runtime} {case}" for case in CASES for runtime in ("torch", "onnxruntime")]  # plain, DCN, per round
    candidates = backend_candidates({name: sources[name] for name in order if name in sources}, images, sizes)
    times = measure(candidates, runs=args.runs, warmup=args.warmup)
    stats = summarize(times)
    print(header(threads=args.threads, runs=args.runs, warmup=args.warmup, input_shape=images.shape))
    print(timing_table(times))
    for runtime in ("torch", "onnxruntime"):
        if f"{runtime} V_39" in stats:
            ratio = stats[f"{runtime} V_39_dcn"].median / stats[f"{runtime} V_39"].median
            print(f"{runtime}: DCN / plain = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
