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
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CASES = ("V_39", "V_39_dcn")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="800x1216", help="padded input HxW (default 800x1216)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx", nargs=2, metavar=("PLAIN", "DCN"), help="exported dynamic models to time in ONNX Runtime")
    p.add_argument("--golden", default=str(ROOT / "tests" / "data"),
                   help="folder holding golden_V_39 and golden_V_39_dcn (default: the repository's tests/data)")
    args = p.parse_args(argv)

    from centermask2.benchmark import (
        header,
        measure,
        model_inputs,
        random_batch,
        set_threads,
        summarize,
        timing_table,
    )
    from centermask2.checkpoint import write_checkpoint
    from centermask2.data import parse_hw
    from centermask2.engine.sources import open_model

    set_threads(args.threads)
    h, w = parse_hw(args.size)
    images, sizes = random_batch(h, w)
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            case_dir = Path(args.golden) / f"golden_{case}"
            config = ROOT / "configs" / "centermask" / json.loads((case_dir / "case.json").read_text())["config"]
            weights = write_checkpoint(case_dir, Path(tmp) / f"{case}.pth")
            sources[f"torch {case}"] = open_model(config, "torch", threads=args.threads,
                                                  opts=["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"])
            if args.onnx:
                path = args.onnx[CASES.index(case)]
                sources[f"onnxruntime {case}"] = open_model(path, "onnxruntime", threads=args.threads)
    candidates = {}
    for case in CASES:  # plain, DCN, in turn, per round
        for runtime in ("torch", "onnxruntime"):
            name = f"{runtime} {case}"
            if name in sources:
                feed = model_inputs(sources[name], images, sizes)
                candidates[name] = lambda backend=sources[name].backend, feed=feed: backend.run(feed)
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
