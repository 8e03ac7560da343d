#!/usr/bin/env python3
"""A COCO-format instance segmentation dataset that needs no download: coloured, textured
shapes at varied scales, rotations and overlaps, composited on crops of the bundled photos.

    python tools/make_shapes_dataset.py --output-dir datasets/shapes [--train 2000] [--val 120] [--seed 0]

Writes ``OUT/{train,val}/images/<id>.png`` and ``OUT/{train,val}/annotations.json``; the generator
is :mod:`centermask2.data.shapes` (deterministic in ``(seed, split, k)``, resumable).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from centermask2.data.shapes import PHOTOS, make_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True, help="dataset root (train/ and val/ are written under it)")
    p.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--val", type=int, default=120, help="held-out images (default 120)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--photos", default=None, help=f"folder of background photos, *.png (default {PHOTOS})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_dataset(args.output_dir, args.train, args.val, args.seed, progress=not args.no_progress, photos=args.photos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
