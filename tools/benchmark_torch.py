#!/usr/bin/env python3
"""Median per-image latency of the PyTorch model for one config and input size.

    python tools/benchmark_torch.py --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        --size 800x1216 [--weights ckpt.pth] [--runs 5] [--threads 2]

Times ``model(images, image_sizes)`` (backbone, FCOS decoding and NMS, mask and MaskIoU heads)
on a synthetic image of the given padded size; pre- and post-processing are not included.
Without --weights the network keeps its initial random weights; the detection heads still
process the configured number of rows (POST_NMS_TOPK_TEST), so the time is representative.
Prints the figures; it is a script, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--size", default="800x1216", help="padded input HxW (multiple of 32), default 800x1216")
    p.add_argument("--weights", default=None, help="checkpoint to load (optional)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from centermask2.checkpoint import load_weights
    from centermask2.config import load_config
    from centermask2.data import parse_hw
    from centermask2.modeling import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    h, w = parse_hw(args.size)
    model = build_model(cfg)
    if h % model.size_divisibility or w % model.size_divisibility:
        p.error(f"--size {args.size}: height and width must be multiples of {model.size_divisibility}")
    if args.weights:
        load_weights(model, args.weights)
    device = torch.device(args.device)
    model.to(device).eval()
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.integers(0, 256, size=(1, 3, h, w), dtype=np.uint8)).to(device)
    sizes = torch.tensor([[h, w]], device=device)
    times = []
    with torch.inference_mode():
        x = model.normalize(raw, sizes)
        for i in range(args.warmup + args.runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(x, sizes)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    print(f"config: {Path(args.config_file).name}")
    print(f"input: 1x3x{h}x{w}  device: {device}  torch threads: {torch.get_num_threads()}  "
          f"torch {torch.__version__}  cpu: {platform.processor() or platform.machine()}")
    print(f"detections: {int(out['num_detections'][0])}")
    print(f"runs: {len(times)}  median: {1000 * statistics.median(times):.1f} ms  "
          f"min: {1000 * min(times):.1f} ms  max: {1000 * max(times):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
