#!/usr/bin/env python3
"""PyTorch eager vs ONNX Runtime (vs OpenVINO) latency of the network: same input, same
threads, one process, runs interleaved.

    python tools/benchmark_backends.py --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        --weights ckpt.pth --onnx V_39_dynamic.onnx --size 800x1216 [--runs 5] [--threads 2] \\
        [--openvino fp32 bf16] [--int8 V_39_dynamic_int8.onnx]

The input is a real image when --image is given (resized as the model expects and padded to
--size), else random pixels. Timed: one call of the network (for PyTorch ``model(...)``, for
ONNX Runtime ``session.run``, for OpenVINO one inference request) from raw pixels to the padded
outputs; pre- and post-processing excluded. Each round runs every backend once, in turn. Prints
the medians and the ratios to ONNX Runtime; it is a script, not a test. ``--int8`` adds the
int8 model of ``tools/quantize.py`` (made from ``--onnx``) in ONNX Runtime and, with
``--openvino``, in OpenVINO at each precision (which the layers it left float32 then run in).
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--openvino", nargs="*", default=None, metavar="PRECISION", choices=["fp32", "bf16", "fp16"],
                   help="also OpenVINO on CPU, at these precisions (default fp32)")
    p.add_argument("--int8", default=None, metavar="ONNX", help="also this int8 model (tools/quantize.py of --onnx)")
    args = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch

    from centermask2.checkpoint import load_weights
    from centermask2.config import load_config
    from centermask2.cpu import cpu_description
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

    backends = {"PyTorch eager": torch_backend, f"ONNX Runtime ({args.provider})": onnx_backend}
    if args.int8:
        int8_backend = OnnxRuntimeBackend(args.int8, provider=args.provider, threads=args.threads)
        if not int8_backend.metadata.quantization:
            p.error(f"--int8 {args.int8} is not a quantized model (tools/quantize.py writes one)")
        backends[f"ONNX Runtime int8 ({args.provider})"] = int8_backend
    if args.openvino is not None:
        from centermask2.engine.openvino_backend import OpenVINOBackend

        for precision in args.openvino or ["fp32"]:
            ov = OpenVINOBackend(args.onnx, threads=args.threads, precision=precision, cache_dir="")
            backends[f"OpenVINO {precision} (ran {ov.precision_used})"] = ov
        if args.int8:  # the layers left float32 by tools/quantize.py computed at each precision
            for precision in args.openvino or ["fp32"]:
                ov = OpenVINOBackend(args.int8, threads=args.threads, precision=precision, cache_dir="")
                backends[f"OpenVINO int8 (rest {ov.precision_used})"] = ov
    times: dict[str, list[float]] = {name: [] for name in backends}
    for i in range(args.warmup + args.runs):
        for name, backend in backends.items():
            t = _time(lambda b=backend: b.run(inputs), 1, 0)[0]
            if i >= args.warmup:
                times[name].append(t)
    print(f"model: {Path(args.onnx).name} ({'dynamic' if meta.dynamic else 'static'}, {meta.input_dtype})  input 1x3x{h}x{w}")
    print(f"threads: {args.threads}  torch {torch.__version__}  onnxruntime {ort.__version__}  "
          f"cpu: {cpu_description()}  runs {args.runs} (interleaved)")
    ort_median = statistics.median(times[f"ONNX Runtime ({args.provider})"])
    for name, backend in backends.items():
        m = statistics.median(times[name])
        det = int(backend.run(inputs)["num_detections"][0])
        print(f"{name:32s}: median {1000 * m:8.1f} ms  (detections {det})  {m / ort_median:5.2f}x ONNX Runtime's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
