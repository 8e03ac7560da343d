#!/usr/bin/env python3
"""What padding invariance costs: a static model that ignores its padding vs one that includes it.

    python tools/benchmark_padding.py [--case V_39] [--size 1344x1344] [--runs 5] [--threads 2] \\
        [--onnx IGNORE.onnx INCLUDE.onnx]

PyTorch eager runs the golden case's model on one golden image padded to ``--size`` with
``ignore_padding=True`` and ``False``; with ``--onnx``, two static exports of the same size
(``--static-padding ignore`` first, then ``include``) run in ONNX Runtime on the same input.
Everything is interleaved in this one process with the same threads; medians and the
ignore / include ratios are printed. It is a script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="V_39", help="golden case under tests/data (default V_39)")
    p.add_argument("--size", default="1344x1344", help="padded input HxW (default 1344x1344)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx", nargs=2, metavar=("IGNORE", "INCLUDE"), help="static exports to time in ONNX Runtime")
    args = p.parse_args(argv)

    import json

    import numpy as np
    import torch

    from centermask2.checkpoint import load_weights, write_checkpoint
    from centermask2.config import load_config
    from centermask2.data import InputSpec, load_and_resize, pad_batch, parse_hw
    from centermask2.modeling import build_model

    torch.set_num_threads(args.threads)
    case_dir = ROOT / "tests" / "data" / f"golden_{args.case}"
    info = json.loads((case_dir / "case.json").read_text())
    cfg = load_config(ROOT / "configs" / "centermask" / info["config"], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        load_weights(model, write_checkpoint(case_dir, Path(tmp) / "model.pth"))
    model.eval()
    spec = InputSpec.from_config(cfg, size_divisibility=model.size_divisibility, pad_to=parse_hw(args.size))
    image, _ = load_and_resize(case_dir / "images" / sorted(info["num_detections"])[0], spec)
    raw, sizes = pad_batch([image], spec)
    runners = {}
    x, s = torch.from_numpy(raw), torch.from_numpy(sizes)
    for ignore in (True, False):
        runners[f"torch {'ignore' if ignore else 'include'}"] = (
            lambda ignore=ignore: model(model.normalize(x, s), s, ignore_padding=ignore)
        )
    if args.onnx:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        for mode, path in zip(("ignore", "include"), args.onnx):
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            dtype = session.get_inputs()[0].type
            feed = {"images": raw if "uint8" in dtype else raw.astype(np.float32), "image_sizes": sizes}
            runners[f"onnxruntime {mode}"] = lambda session=session, feed=feed: session.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in range(args.runs + 1):  # the first round warms up
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                if run:
                    times[name].append(time.perf_counter() - t0)
    print(f"{args.case}, image {image.shape[0]}x{image.shape[1]} padded to 1x3x{raw.shape[2]}x{raw.shape[3]}, "
          f"{args.threads} threads, torch {torch.__version__}, cpu {platform.processor() or platform.machine()} "
          f"({torch.backends.cpu.get_cpu_capability()}), {args.runs} interleaved runs")
    for name, values in times.items():
        print(f"{name:24s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    for backend in ("torch", "onnxruntime"):
        if f"{backend} ignore" in times:
            ratio = statistics.median(times[f"{backend} ignore"]) / statistics.median(times[f"{backend} include"])
            print(f"{backend}: ignore / include = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
