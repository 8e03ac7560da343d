#!/usr/bin/env python3
"""Make the semantic ground truth of Panoptic-CenterMask from COCO panoptic annotations.

    python tools/prepare_panoptic_stuff.py --dataset coco_2017_val_panoptic [--resume]
    python tools/prepare_panoptic_stuff.py --panoptic-json coco/annotations/panoptic_val2017.json \\
        --panoptic-root coco/panoptic_val2017 --output-dir coco/panoptic_stuff_val2017

Writes one 8-bit PNG per panoptic PNG, of the same name: things 0, stuff 1-53, void 255 (what
detectron2's ``datasets/prepare_panoptic_fpn.py`` writes; ``postprocess_bin_outputs.py
--sem-seg-root`` scores against it). Files are written atomically; ``--resume`` keeps those an
earlier run finished. Exit status: 0 done, 1 some images failed (named), 2 bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from centermask2.cli.common import new_parser, run_main, setup_logging  # noqa: E402
from centermask2.errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError  # noqa: E402

logger = logging.getLogger("prepare_panoptic_stuff")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("prepare_panoptic_stuff.py", __doc__.split("\n\n")[0])
    parser.add_argument("--dataset", metavar="NAME",
                        help="a registered panoptic dataset under $DETECTRON2_DATASETS, e.g. coco_2017_val_panoptic")
    parser.add_argument("--panoptic-json", metavar="FILE", help="COCO panoptic annotations (panoptic_val2017.json)")
    parser.add_argument("--panoptic-root", metavar="DIR",
                        help="their PNG folder (default: the folder next to the JSON named by its stem)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where the PNGs go (default with --dataset: coco/panoptic_stuff_<split>)")
    parser.add_argument("--resume", action="store_true", help="keep the PNGs an earlier run finished")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    from centermask2.data.catalog import resolve_panoptic_dataset
    from centermask2.data.panoptic_stuff import prepare_panoptic_stuff

    args = build_parser().parse_args(argv)
    setup_logging()
    panoptic_json, panoptic_root, output_dir = args.panoptic_json, args.panoptic_root, args.output_dir
    if args.dataset:
        paths = resolve_panoptic_dataset(args.dataset)
        panoptic_json = panoptic_json or paths.panoptic_json
        panoptic_root = panoptic_root or paths.panoptic_root
        output_dir = output_dir or paths.sem_seg_root
    if not panoptic_json or not output_dir:
        raise InputError("give --dataset NAME, or --panoptic-json FILE and --output-dir DIR")
    summary = prepare_panoptic_stuff(panoptic_json, panoptic_root, output_dir, resume=args.resume,
                                     progress=not args.no_progress)
    logger.info("panoptic_stuff: %d written, %d kept from an earlier run, %d failed in %.1f s -> %s",
                summary.num_images, summary.num_resumed, len(summary.failed), summary.wall_s, output_dir)
    if summary.failed:
        logger.error("error: %d image(s) failed:\n%s", len(summary.failed), summary.format_failures())
        return EXIT_ITEMS_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv, resumable=True)


if __name__ == "__main__":
    sys.exit(main())
