#!/usr/bin/env python3
"""ONNX Runtime vs PyTorch eager latency of the network, same input, same threads, one process.

    python tools/benchmark_backends.py --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        --weights ckpt.pth --onnx V_39_dynamic.onnx --size 800x1216 [--runs 5] [--threads 2]

The input is a real image when --image is given (resized as the model expects and padded to
--size), else random pixels. Timed: one call of the network (for PyTorch ``model(...)``, for
ONNX Runtime ``session.run``) from raw pixels to the padded outputs; pre- and post-processing
excluded. Prints the medians and the ratio; it is a script, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path


def _time(fn, runs: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="checkpoint the ONNX model was exported from")
    p.add_argument("--onnx", required=True, help="exported model")
    p.add_argument("--size", default=None, help="padded input HxW (default: a static model's size, else 800x1216)")
    p.add_argument("--image", default=None, help="an image to use instead of random pixels")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    args = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch

    from centermask2.checkpoint import load_weights
    from centermask2.config import load_config
    from centermask2.data import InputSpec, load_and_resize, pad_batch, parse_hw
    from centermask2.engine.onnxruntime_backend import OnnxRuntimeBackend
    from centermask2.engine.torch_backend import TorchBackend
    from centermask2.modeling import build_model

    torch.set_num_threads(args.threads)
    onnx_backend = OnnxRuntimeBackend(args.onnx, provider=args.provider, threads=args.threads)
    meta = onnx_backend.metadata
    h, w = parse_hw(args.size) if args.size else (meta.input_size or (800, 1216))
    if meta.input_size is not None and (h, w) != tuple(meta.input_size):
        p.error(f"{args.onnx} is static {meta.input_size[0]}x{meta.input_size[1]}; --size must match")
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    load_weights(model, args.weights)
    torch_backend = TorchBackend(model, "cuda" if args.provider != "cpu" else "cpu")

    spec = InputSpec.from_metadata(meta, pad_to=(h, w))
    if args.image:
        images, sizes = pad_batch([load_and_resize(args.image, spec)[0]], spec)
    else:
        images = np.random.default_rng(0).integers(0, 256, size=(1, 3, h, w), dtype=np.uint8)
        sizes = np.array([[h, w]], dtype=np.int64)
    inputs = {"images": images.astype(meta.input_dtype), "image_sizes": sizes}

    t_torch = _time(lambda: torch_backend.run(inputs), args.runs, args.warmup)
    t_ort = _time(lambda: onnx_backend.run(inputs), args.runs, args.warmup)
    det_t = int(torch_backend.run(inputs)["num_detections"][0])
    det_o = int(onnx_backend.run(inputs)["num_detections"][0])
    mt, mo = statistics.median(t_torch), statistics.median(t_ort)
    print(f"model: {Path(args.onnx).name} ({'dynamic' if meta.dynamic else 'static'}, {meta.input_dtype})  input 1x3x{h}x{w}")
    print(f"threads: {args.threads}  torch {torch.__version__}  onnxruntime {ort.__version__}  "
          f"cpu: {platform.processor() or platform.machine()}")
    print(f"PyTorch eager : median {1000 * mt:8.1f} ms  (runs {len(t_torch)}, detections {det_t})")
    print(f"ONNX Runtime  : median {1000 * mo:8.1f} ms  (runs {len(t_ort)}, detections {det_o}, {args.provider})")
    print(f"ratio ORT / PyTorch: {mo / mt:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
