#!/usr/bin/env python3
"""Where an exported model's time goes in OpenVINO: per-layer performance counters, grouped.

    python tools/profile_openvino.py MODEL.onnx [--precision fp32|bf16] [--size 800x1216] \\
        [--threads 2] [--runs 3] [--top 25] [--by exec|type|layer]

Compiles the model with OpenVINO's performance counters on, runs it ``--runs`` times on random
pixels (after one warm-up) and prints, from the last run, the time per group of layers: by the
kernel OpenVINO chose (``--by exec``, default: e.g. ``jit_avx512_I8``, ``jit_avx2_FP32``,
``ref_any``; its suffix is the precision the layer ran in), by layer type (``--by type``:
Convolution, Reorder, FakeQuantize, Eltwise, ...) or layer by layer (``--by layer``). Reorders
(layout or precision conversions) and float layers inside an int8 model are what keeps it from
its int8 floor (``tools/benchmark.py`` prints the floor). A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from centermask2.benchmark import add_timing_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("model", help="exported .onnx (float32 or tools/quantize.py's int8 model)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="OpenVINO's inference precision for the float layers (default fp32)")
    p.add_argument("--size", default=None, metavar="HxW", help="input size (default: a static model's, else 800x1216)")
    p.add_argument("--by", default="exec", choices=["exec", "type", "layer"], help="grouping (default exec)")
    p.add_argument("--top", type=int, default=25, help="rows printed (default 25)")
    add_timing_arguments(p, runs=3, warmup=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from centermask2.benchmark import format_table, header, measure, random_batch
    from centermask2.contract import read_metadata
    from centermask2.data import parse_hw
    from centermask2.engine.openvino_backend import OpenVINOBackend
    from centermask2.errors import CenterMask2Error

    try:
        meta = read_metadata(args.model)
    except CenterMask2Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h, w = parse_hw(args.size) if args.size else (tuple(meta.input_size) if meta.input_size else (800, 1216))
    batch = meta.batch_size or 1
    images, sizes = random_batch(h, w, batch)
    try:
        backend = OpenVINOBackend(args.model, precision=args.precision, threads=args.threads or None, cache_dir="",
                                  perf_count=True)
    except CenterMask2Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    feed = {"images": images.astype(meta.input_dtype), "image_sizes": sizes}
    walls = measure({"call": lambda: backend.run(feed)}, runs=args.runs, warmup=args.warmup)["call"]
    infos = backend.profiling_info()
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    total = 0.0
    for info in infos:
        if str(info.status).endswith("NOT_RUN"):
            continue
        ms = info.real_time.total_seconds() * 1000.0
        key = {"exec": info.exec_type, "type": info.node_type, "layer": f"{info.node_name} ({info.node_type}, "
               f"{info.exec_type})"}[args.by]
        groups[key][0] += ms
        groups[key][1] += 1
        total += ms
    rows = [[k, n, f"{t:.1f}", f"{100 * t / total:.1f}%"] for k, (t, n) in
            sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]]
    print(header(threads=args.threads, runs=args.runs, warmup=args.warmup, input_shape=(batch, 3, h, w), notes=[
        f"model: {args.model} ({'int8: ' + meta.quantization if meta.quantization else 'float32'}), OpenVINO "
        f"{args.precision}; wall per call: {1000 * sorted(walls)[len(walls) // 2]:.0f} ms (median); layers' own "
        f"time (last call): {total:.0f} ms"]))
    print(format_table([{"exec": "kernel", "type": "layer type", "layer": "layer"}[args.by], "layers", "ms", "share"],
                       rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
