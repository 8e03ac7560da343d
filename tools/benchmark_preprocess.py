#!/usr/bin/env python3
"""Throughput of preprocess_inputs_to_bin.py's library path, and the size of its bins.

    python tools/benchmark_preprocess.py [--num-images 64] [--workers 1,2] [--input-size 1344x1344] [--runs 1]

Generates N synthetic 640x480 JPEGs (smooth gradients plus noise, like a photo's cost to decode)
in a temp folder, preprocesses them into uint8 bins with each worker count (a process pool; read, EXIF, resize
with the config's MIN/MAX_SIZE_TEST, pad, atomic write), then into float32 bins with one worker,
``--runs`` times in interleaved rounds (:func:`centermask2.benchmark.measure`; each call writes a
fresh folder), and prints the median images/s and bytes per image as written on disk. It is a
script, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path

DEFAULT_CONFIG = ROOT / "configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml"


def _make_images(folder: Path, num: int, height: int = 480, width: int = 640) -> None:
    """``num`` JPEGs of ``height x width`` named like COCO files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(num):
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([127 + 100 * np.sin(xx / (40 + 10 * c) + yy / 70 + phase[c]) for c in range(3)], axis=-1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i + 1:012d}.jpg", quality=90)


def _bin_bytes(folder: Path) -> int:
    """Bytes on disk of the first image's images bin plus its image_sizes bin."""
    from centermask2.offline.layout import BinInfo

    im = BinInfo.load(folder).images[0]
    return (folder / im.bin).stat().st_size + (folder / im.sizes_bin).stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--input-size", default="1344x1344", metavar="HxW")
    p.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="resize rule (default: V-39, 800/1333)")
    add_timing_arguments(p, runs=1, warmup=0, threads=None)
    args = p.parse_args(argv)

    from centermask2.benchmark import format_table, header, measure, summarize
    from centermask2.data import list_images, parse_hw
    from centermask2.engine.executors import LocalExecutor, PoolExecutor
    from centermask2.offline.preprocess import preprocess_to_bins, spec_from_config

    size = parse_hw(args.input_size)
    uint8 = spec_from_config(args.config_file, size, "uint8")
    float32 = spec_from_config(args.config_file, size, "float32")
    configs = {f"uint8, {int(w)} worker(s)": (uint8, int(w)) for w in args.workers.split(",")}
    configs["float32, 1 worker(s)"] = (float32, 1)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        _make_images(images, args.num_images)
        records = list_images(images)
        outputs = {name: Path(tmp) / f"bins_{k}" for k, name in enumerate(configs)}
        failed = []

        def run(name: str) -> None:
            spec, workers = configs[name]
            with PoolExecutor(workers) if workers > 1 else LocalExecutor() as executor:
                summary = preprocess_to_bins(records, outputs[name], spec, executor=executor, progress=False)
            if not summary.ok:
                failed.append(summary.format())

        def fresh(name: str) -> None:  # untimed: every call writes a new folder
            shutil.rmtree(outputs[name], ignore_errors=True)

        stats = summarize(measure({name: lambda name=name: run(name) for name in configs}, runs=args.runs,
                                  warmup=args.warmup, before=fresh))
        if failed:
            print(failed[0])
            return 1
        rows = []
        for name, (spec, workers) in configs.items():
            rate = args.num_images / stats[name].median
            rows.append([spec.dtype, workers, f"{rate:.1f}", f"{1000 / rate:.1f}", f"{_bin_bytes(outputs[name]):,}"])
    print(header(threads=None, runs=args.runs, warmup=args.warmup, input_shape=f"1x3x{size[0]}x{size[1]} bins", notes=[
        f"{args.num_images} synthetic 640x480 JPEGs (MIN/MAX_SIZE_TEST {uint8.input.min_size}/{uint8.input.max_size} "
        f"from {Path(args.config_file).name})"]))
    print(format_table(["dtype", "workers", "images/s", "ms/image", "bytes/image"], rows))
    print(f"float32 / uint8 bin size: {float32.bytes_per_image / uint8.bytes_per_image:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
