"""Post-process offline model outputs and evaluate them on COCO.

Two modes:

* evaluation only: ``--results coco_instances_results.json --coco-json ANN.json
  [--output-dir OUT]`` evaluates COCO-format detections (bbox and segm, centermask2 style) and
  writes ``OUT/metrics.json``; with ``--panoptic-results P.json --panoptic-json GT.json
  [--panoptic-root DIR] [--sem-seg-root DIR]`` (or ``--dataset coco_2017_val_panoptic`` for all the
  ground truth) it also scores panoptic quality (``panoptic_seg``) and, when a ``sem_seg_results/``
  folder is next to P.json, semantic segmentation (``sem_seg``). Unusable input files (results,
  ground truth, panoptic or semantic) exit with status 2, before any scoring;
* ``.bin`` outputs, stage 3 of the offline pipeline (``--outputs RAW --info BINS/bin_info.json
  --output-dir OUT [--model model.onnx] [--coco-json ANN.json] [--allow-missing]``): the raw
  network outputs of ``tester.py --bins`` (or of any engine writing the same bytes:
  ``<stem>_<k>.bin``, output k in model order, raw C-order ``[1, ...]``) are mapped back to the
  original images and written as ``OUT/coco_instances_results.json``; with --coco-json they are
  scored exactly as ``tester.py`` does (``OUT/metrics.json``). The layout comes from
  ``RAW/manifest.json``, or from --model (and --index-base) when the engine wrote no manifest.
  Exit status: 0 done, 1 output bins missing/truncated (without --allow-missing) or corrupt,
  2 bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contract import SEM_SEG_OUTPUT, PanopticSettings
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, CenterMask2Error, InputError
from ..evaluation import evaluate_coco, format_table, load_coco_ground_truth, load_coco_results
from ..evaluation.ground_truth import evaluate_panoptic_inputs, find_ground_truth, read_panoptic_inputs
from ..evaluation.panoptic import PANOPTIC_RESULTS_NAME, write_panoptic_json
from ..fileio import atomic_write_json, ensure_writable_dir
from .common import new_parser, parse_args, report_error, run_main, setup_logging

logger = logging.getLogger("postprocess_bin_outputs")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of this script."""
    parser = new_parser(
        "postprocess_bin_outputs.py",
        (
            "Evaluate CenterMask2 detections on a COCO-format dataset (bbox and segm AP, segm "
            "ranked by mask_score as centermask2 does). Give --results to evaluate an existing "
            "coco_instances_results.json; the .bin mode (--outputs/--info) converts raw "
            "offline outputs first."
        ),
        (
            "examples: python postprocess_bin_outputs.py --results out/coco_instances_results.json "
            "--coco-json annotations/instances_val2017.json --output-dir out/eval;  "
            "python postprocess_bin_outputs.py --outputs RAW --info BINS/bin_info.json "
            "--coco-json annotations/instances_val2017.json --output-dir out/offline"
        ),
        raw=False,
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
        help="where to write metrics.json (and, in .bin mode, coco_instances_results.json)",
    )
    pan_group = parser.add_argument_group("panoptic evaluation (Panoptic-CenterMask; evaluation-only mode)")
    pan_group.add_argument(
        "--panoptic-results", metavar="JSON",
        help="panoptic_results.json (COCO panoptic format, PNGs in the folder next to it named by its stem); "
        "scored for PQ, and for sem_seg when a sem_seg_results/ folder is next to it",
    )
    pan_group.add_argument("--panoptic-json", metavar="FILE", help="ground-truth COCO panoptic annotations")
    pan_group.add_argument(
        "--panoptic-root", metavar="DIR",
        help="their PNG folder (default: the folder next to --panoptic-json named by its stem)",
    )
    pan_group.add_argument(
        "--sem-seg-root", metavar="DIR",
        help="semantic ground truth PNGs (things 0, stuff 1-53, void 255; tools/prepare_panoptic_stuff.py)",
    )
    pan_group.add_argument(
        "--dataset", metavar="NAME",
        help="take the ground truth from a registered dataset under $DETECTRON2_DATASETS, e.g. "
        "coco_2017_val_panoptic (the options above and --coco-json override its files)",
    )
    bin_group = parser.add_argument_group(".bin mode (stage 3 of the offline pipeline)")
    bin_group.add_argument(
        "--outputs", metavar="DIR",
        help="folder of raw output bins <stem>_<k>.bin (tester.py --bins, or any engine writing the same bytes)",
    )
    bin_group.add_argument(
        "--info", metavar="FILE", help="BINS/bin_info.json written by preprocess_inputs_to_bin.py (or its folder)"
    )
    bin_group.add_argument(
        "--model", metavar="FILE",
        help="the exported .onnx: output layout when DIR has no manifest.json, and category ids without --coco-json",
    )
    bin_group.add_argument(
        "--index-base", type=int, choices=[0, 1], default=None,
        help="output files are numbered from 0 (default) or 1; only needed without manifest.json",
    )
    bin_group.add_argument(
        "--allow-missing", action="store_true",
        help="go on when output bins are missing or truncated: those images get no detections",
    )
    bin_group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


_OVERALL = {"panoptic_seg": None, "sem_seg": ("mIoU", "fwIoU", "mACC", "pACC")}


def _summary(metrics: dict[str, dict[str, Any]]) -> str:
    """One table with a row per evaluated task (bbox, segm), then one per panoptic / semantic task."""
    tables = []
    tasks = [t for t in ("bbox", "segm") if t in metrics]
    if tasks:
        names = list(metrics[tasks[0]])
        tables.append(format_table(["task", *names], [[t, *(metrics[t][n] for n in names)] for t in tasks]))
    for task, keys in _OVERALL.items():
        if task in metrics:
            names = list(keys or metrics[task])
            tables.append(format_table(["task", *names], [[task, *(metrics[task][n] for n in names)]]))
    return "\n\n".join(tables) or "(no metrics)"


def _category_ids(args: argparse.Namespace) -> list[int]:
    """Contiguous class -> dataset category id: from --coco-json, else the model, else COCO's 80."""
    from ..contract import read_metadata
    from ..data.categories import coco_contiguous_to_dataset_id, load_coco_categories

    model_ids = read_metadata(args.model).category_ids if args.model else None
    if args.coco_json:
        ids, _ = load_coco_categories(args.coco_json)
        if model_ids is not None and len(ids) != len(model_ids):
            raise InputError(
                f"{args.coco_json!r} has {len(ids)} categories but {args.model!r} predicts {len(model_ids)} classes"
            )
        return ids
    if model_ids is not None:
        return list(model_ids)
    logger.info("No --coco-json or --model: category ids are those of the 80 COCO classes")
    return coco_contiguous_to_dataset_id()


def _run_bins(args: argparse.Namespace) -> int:
    """The .bin mode; returns the exit status."""
    from ..fileio import atomic_write_json
    from ..offline.layout import BinInfo
    from ..offline.postprocess import (
        find_output_problems,
        format_problems,
        images_without_bins,
        postprocess_bins,
        resolve_manifest,
    )

    if not (args.outputs and args.info and args.output_dir):
        raise InputError("the .bin mode needs --outputs RAW --info BINS/bin_info.json --output-dir OUT.")
    out_dir = ensure_writable_dir(args.output_dir, "--output-dir")
    info = BinInfo.load(args.info)
    manifest = resolve_manifest(args.outputs, args.model, args.index_base)
    ids = _category_ids(args)
    panoptic = _panoptic_settings(args, manifest)
    truth = find_ground_truth(args.coco_json, args.panoptic_json, args.panoptic_root, args.sem_seg_root, args.dataset,
                              need_coco=bool(args.dataset))
    args.coco_json = truth.coco_json
    if truth.panoptic_json and panoptic is None:
        raise InputError("--panoptic-json / --sem-seg-root / --dataset score a panoptic model's outputs, and these "
                         f"outputs have no {SEM_SEG_OUTPUT!r}")
    gt = load_coco_ground_truth(args.coco_json) if args.coco_json else None  # bad ground truth: exit 2, now
    problems = find_output_problems(args.outputs, info, manifest)
    if gt is not None:
        problems += images_without_bins(info, gt)

    if problems:
        affected = len({p.stem for p in problems if p.stem is not None}) + sum(p.stem is None for p in problems)
        logger.warning(
            "%d output bin(s) missing or unusable in %s, affecting %d image(s):\n%s",
            len(problems), args.outputs, affected, format_problems(problems),
        )
        if not args.allow_missing:
            logger.error(
                "error: %d output bin(s) missing or unusable (listed above); re-run tester.py --bins "
                "... --resume to complete them, or pass --allow-missing to score without those images.",
                len(problems),
            )
            return EXIT_ITEMS_FAILED
        if args.coco_json:
            logger.warning("--allow-missing: those images count as having no detections; the AP is a lower bound")
    skip = sorted({p.stem for p in problems if p.stem is not None})

    try:
        results, summary = postprocess_bins(args.outputs, info, manifest, ids, skip=skip,
                                            progress=not args.no_progress, panoptic=panoptic, output_dir=out_dir)
        logger.info("Post-processing: %s", summary.format())
        atomic_write_json(results, out_dir / "coco_instances_results.json")
        if panoptic is not None:
            write_panoptic_json(out_dir / PANOPTIC_RESULTS_NAME, summary.panoptic, base=truth.panoptic_json)
        metrics: dict[str, Any] = {}
        t0 = time.perf_counter()
        if gt is not None:
            metrics.update(evaluate_coco(results, gt))
    except CenterMask2Error as exc:  # a corrupt output bin found while reading: the run failed
        return report_error(exc, EXIT_ITEMS_FAILED)
    if truth.panoptic_json:  # bad ground truth is a bad input file (exit 2)
        metrics.update(evaluate_panoptic_inputs(read_panoptic_inputs(out_dir / PANOPTIC_RESULTS_NAME, truth)))
    logger.info("Results: %s", out_dir / "coco_instances_results.json")
    if metrics:
        logger.info("Evaluation: %.1f s", time.perf_counter() - t0)
        atomic_write_json(metrics, out_dir / "metrics.json")
        logger.info("Metrics: %s", out_dir / "metrics.json")
        print(_summary(metrics))
    return EXIT_OK


def _panoptic_settings(args: argparse.Namespace, manifest: Any) -> PanopticSettings | None:
    """A panoptic model's post-processing settings: from --model, else from the model the manifest
    names when it is there, else detectron2's defaults (those of every official config); None
    when the outputs have no ``sem_seg``."""
    import os

    if SEM_SEG_OUTPUT not in {o.name for o in manifest.outputs}:
        return None
    for model in (args.model, manifest.model):
        if model and os.path.isfile(model):
            settings = PanopticSettings.from_model(model)
            if settings is not None:
                return settings
    settings = PanopticSettings.defaults()
    logger.info("Panoptic post-processing with detectron2's default settings (%s); pass --model to use the model's",
                settings)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the process exit status (0 on success)."""
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    setup_logging()

    panoptic_options = [o for o, v in (("--panoptic-json", args.panoptic_json), ("--panoptic-root", args.panoptic_root),
                                       ("--sem-seg-root", args.sem_seg_root), ("--dataset", args.dataset)) if v]
    if args.results is None and args.panoptic_results is None:
        if args.outputs or args.info:
            return _run_bins(args)
        if panoptic_options:
            raise InputError(f"{', '.join(panoptic_options)} score panoptic results: give --panoptic-results (evaluation "
                             "only) or --outputs/--info (.bin mode).")
        parser.print_usage(sys.stderr)
        raise InputError(
            "give --results R.json --coco-json ANN.json and/or --panoptic-results P.json --panoptic-json GT.json "
            "(evaluation mode) or --outputs RAW --info BINS/bin_info.json --output-dir OUT (.bin mode)."
        )
    if args.outputs or args.info or args.model or args.allow_missing or args.index_base is not None:
        raise InputError("--results/--panoptic-results cannot be combined with the .bin mode options "
                         "(--outputs/--info/--model).")
    if args.panoptic_results is None and (args.panoptic_json or args.panoptic_root or args.sem_seg_root):
        raise InputError("--panoptic-json/--panoptic-root/--sem-seg-root need --panoptic-results (the predictions).")
    truth = find_ground_truth(args.coco_json, args.panoptic_json, args.panoptic_root, args.sem_seg_root, args.dataset,
                              need_coco=args.results is not None)
    missing = [need for need, given in (("--results needs --coco-json (the ground-truth annotations) or --dataset.",
                                         args.results is None or truth.coco_json),
                                        ("--panoptic-results needs --panoptic-json (the ground-truth panoptic "
                                         "annotations) or --dataset.", args.panoptic_results is None or truth.panoptic_json))
               if not given]
    if missing:
        parser.print_usage(sys.stderr)
        raise InputError(missing[0])

    if args.output_dir:
        ensure_writable_dir(args.output_dir, "--output-dir")
    # every input file is checked before any scoring; their errors exit with 2 (bad input files)
    panoptic = read_panoptic_inputs(args.panoptic_results, truth) if args.panoptic_results else None
    metrics: dict[str, dict[str, Any]] = {}
    results = gt = None
    if args.results:
        gt = load_coco_ground_truth(truth.coco_json)
        results = load_coco_results(args.results)
        logger.info("Loaded %d detections from %s", len(results), args.results)
    coco_metrics = evaluate_coco(results, gt) if results is not None else {}  # checks the results against gt first
    if panoptic is not None:
        metrics.update(evaluate_panoptic_inputs(panoptic))
    metrics.update(coco_metrics)
    if args.output_dir:
        atomic_write_json(metrics, Path(args.output_dir) / "metrics.json")
        logger.info("Wrote %s", Path(args.output_dir) / "metrics.json")
    print(_summary(metrics))
    return EXIT_OK
