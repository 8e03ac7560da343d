#!/usr/bin/env python3
"""What deformable convolution costs: V-39 vs V-39-DCN, PyTorch eager and ONNX Runtime.

    python tools/benchmark_dcn.py [--size 800x1216] [--runs 5] [--threads 2] \\
        [--onnx V_39.onnx V_39_dcn.onnx]

Both models run in this one process on the same synthetic image, interleaved (plain, DCN,
plain, DCN, ...), with the same number of threads; medians are printed. The weights are the
golden test cases' (``tests/data/golden_V_39``, ``golden_V_39_dcn``), so the detection heads
see realistic numbers of candidates. With ``--onnx``, two exported dynamic models (plain first)
are timed in ONNX Runtime the same way. It is a script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {"V_39": "centermask_V_39_eSE_FPN_ms_3x.yaml", "V_39_dcn": "centermask_V_39_eSE_dcn_FPN_ms_3x.yaml"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="800x1216", help="padded input HxW (default 800x1216)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx", nargs=2, metavar=("PLAIN", "DCN"), help="exported dynamic models to time in ONNX Runtime")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from centermask2.checkpoint import load_weights, write_checkpoint
    from centermask2.config import load_config
    from centermask2.data import parse_hw
    from centermask2.modeling import build_model

    torch.set_num_threads(args.threads)
    h, w = parse_hw(args.size)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, config in CASES.items():
            model = build_model(load_config(ROOT / "configs" / "centermask" / config, ["MODEL.DEVICE", "cpu"]))
            load_weights(model, write_checkpoint(ROOT / "tests" / "data" / f"golden_{case}", Path(tmp) / f"{case}.pth"))
            models[case] = model.eval()
    raw = np.random.default_rng(0).integers(0, 256, size=(1, 3, h, w), dtype=np.uint8)
    sizes = np.array([[h, w]], dtype=np.int64)
    times: dict[str, list[float]] = {f"torch {c}": [] for c in CASES}
    sessions = {}
    if args.onnx:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        for case, path in zip(CASES, args.onnx):
            sessions[case] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            times[f"onnxruntime {case}"] = []
    with torch.inference_mode():
        x, s = torch.from_numpy(raw), torch.from_numpy(sizes)
        for run in range(args.runs + 1):  # the first round warms up
            for case, model in models.items():
                t0 = time.perf_counter()
                model(model.normalize(x, s), s)
                if run:
                    times[f"torch {case}"].append(time.perf_counter() - t0)
                if case in sessions:
                    t0 = time.perf_counter()
                    sessions[case].run(None, {"images": raw, "image_sizes": sizes})
                    if run:
                        times[f"onnxruntime {case}"].append(time.perf_counter() - t0)
    print(f"input 1x3x{h}x{w}, {args.threads} threads, torch {torch.__version__}, "
          f"cpu {platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{args.runs} interleaved runs")
    for name, values in times.items():
        print(f"{name:24s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    for backend in ("torch", "onnxruntime"):
        if f"{backend} V_39" in times:
            ratio = statistics.median(times[f"{backend} V_39_dcn"]) / statistics.median(times[f"{backend} V_39"])
            print(f"{backend}: DCN / plain = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
