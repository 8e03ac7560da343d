#!/usr/bin/env python
"""Post-process offline model outputs and evaluate them on COCO.

Two modes:

* evaluation only: ``--results coco_instances_results.json --coco-json ANN.json
  [--output-dir OUT]`` evaluates COCO-format detections (bbox and segm, centermask2 style) and
  writes ``OUT/metrics.json``;
* ``.bin`` outputs (``--outputs DIR --info INFO --model CFG``): raw network outputs written
  by an offline runtime are turned into COCO results first. Not implemented yet.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from centermask2.evaluation import evaluate_coco, format_table, load_coco_results

logger = logging.getLogger("postprocess_bin_outputs")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of this script."""
    parser = argparse.ArgumentParser(
        prog="postprocess_bin_outputs.py",
        description=(
            "Evaluate CenterMask2 detections on a COCO-format dataset (bbox and segm AP, segm "
            "ranked by mask_score as centermask2 does). Give --results to evaluate an existing "
            "coco_instances_results.json; the .bin mode (--outputs/--info/--model) converts raw "
            "offline outputs first."
        ),
        epilog=(
            "example: python postprocess_bin_outputs.py --results out/coco_instances_results.json "
            "--coco-json annotations/instances_val2017.json --output-dir out/eval"
        ),
    )
    parser.add_argument(
        "--results",
        metavar="JSON",
        help="COCO results file (list of detections with dataset category ids), e.g. "
        "coco_instances_results.json; selects the evaluation-only mode",
    )
    parser.add_argument(
        "--coco-json",
        metavar="JSON",
        help="ground-truth COCO annotation file (images, categories, annotations)",
    )
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where to write metrics.json and coco_instances_results.json (optional)",
    )
    bin_group = parser.add_argument_group(".bin mode (not implemented yet)")
    bin_group.add_argument("--outputs", metavar="DIR", help="folder of raw .bin network outputs")
    bin_group.add_argument("--info", metavar="FILE", help="per-image info file written at pre-processing")
    bin_group.add_argument("--model", metavar="FILE", help="model config (YAML) or exported model")
    return parser


def _summary(metrics: dict[str, dict[str, float]]) -> str:
    """One table with a row per evaluated task (bbox, segm)."""
    tasks = [t for t in ("bbox", "segm") if t in metrics]
    if not tasks:
        return "(no metrics)"
    names = list(metrics[tasks[0]])
    return format_table(["task", *names], [[t, *(metrics[t][n] for n in names)] for t in tasks])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the process exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    if args.results is None:
        if args.outputs or args.info or args.model:
            print(
                "error: the .bin mode (--outputs/--info/--model) is not implemented yet; "
                "evaluate an existing results file with --results R.json --coco-json ANN.json.",
                file=sys.stderr,
            )
            return 2
        parser.print_usage(sys.stderr)
        print("error: give --results R.json --coco-json ANN.json (evaluation mode).", file=sys.stderr)
        return 2
    if args.coco_json is None:
        parser.print_usage(sys.stderr)
        print("error: --results needs --coco-json (the ground-truth annotations).", file=sys.stderr)
        return 2

    try:
        results = load_coco_results(args.results)
        logger.info("Loaded %d detections from %s", len(results), args.results)
        metrics = evaluate_coco(results, args.coco_json, output_dir=args.output_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
