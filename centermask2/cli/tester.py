"""Run a CenterMask2 model over images and write COCO results (and metrics with annotations).

PyTorch backend (a checkpoint and its config):

    python tester.py --backend torch --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        --images datasets/coco/val2017 --coco-json datasets/coco/annotations/instances_val2017.json \\
        --output-dir output/V_39 MODEL.WEIGHTS centermask2-V-39-eSE-FPN-ms-3x.pth MODEL.DEVICE cpu

Writes OUTPUT_DIR/coco_instances_results.json and, with --coco-json, OUTPUT_DIR/metrics.json.
Without --coco-json every image in --images is run and no metrics are computed.

Offline .bin pipeline, stage 2 (bins from preprocess_inputs_to_bin.py through ONNX Runtime):

    python tester.py --model V_39_1344.onnx --bins BINS --output RAW [--provider cpu] [--threads N] \\
        [--index-base 0|1] [--resume]

Writes RAW/<stem>_<k>.bin per output k (model order) and RAW/manifest.json; then
postprocess_bin_outputs.py turns them into results. Exit status 1 if a bad input bin was skipped.

OpenVINO instead of ONNX Runtime (image mode and --bins): --backend openvino [--device CPU|GPU|AUTO]
[--precision fp32|bf16|fp16] with the same --model.

On a Ray cluster (image mode and --bins, every backend; pip install -e ".[ray]"): --ray [ADDRESS]
[--ray-actors N] [--threads T], without ADDRESS a local instance, with auto, ray://host:port or
host:port an existing cluster; results are identical to a single-process run with the same --threads.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ..contract import PADDING_MODES
from ..engine.openvino_backend import OPENVINO_DEVICES, PRECISIONS
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError
from .common import (
    PROVIDER_CHOICES,
    add_config_arguments,
    add_overrides,
    add_ray_argument,
    batch_size_int,
    hw_type,
    make_executor,
    new_parser,
    parse_args,
    ray_actors_int,
    run_main,
    setup_logging,
    threads_int,
)

logger = logging.getLogger("tester")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "tester.py",
        "Run CenterMask2 over a folder of images (optionally a COCO dataset) and write "
        "coco_instances_results.json (and metrics.json with --coco-json); or, with --bins, run the .bin inputs "
        "of preprocess_inputs_to_bin.py through an ONNX model and write raw output bins.",
        "With --backend torch, trailing KEY VALUE pairs override the config, "
        "e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu.",
    )
    p.add_argument(
        "--backend", choices=["torch", "onnx", "openvino"], default=None,
        help="inference backend: torch, onnx (ONNX Runtime) or openvino (the same .onnx in OpenVINO, "
        'pip install -e ".[openvino]"); default: torch; onnx with --bins',
    )
    add_config_arguments(p, help="[torch] model config YAML, e.g. configs/centermask/<name>.yaml")
    p.add_argument("--model", help="[onnx] exported .onnx model (its metadata gives every setting)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default="cpu", help="[onnx] execution provider")
    p.add_argument("--device", choices=list(OPENVINO_DEVICES), default=None, help="[openvino] device (default CPU)")
    p.add_argument(
        "--precision", choices=list(PRECISIONS), default=None,
        help="[openvino] inference precision (default fp32; bf16 needs AVX-512 BF16 or AMX, else OpenVINO runs fp32)",
    )
    p.add_argument(
        "--requests", type=int, default=None, metavar="N",
        help="[openvino] infer requests at once (default 1: OpenVINO's latency hint; N > 1, or 0 for OpenVINO's "
        "choice: its throughput hint, several images in flight: more images/s where one call leaves cores idle)",
    )
    p.add_argument(
        "--no-overlap", action="store_true",
        help="run each image's reading, model and post-processing one after the other (default: reading the next "
        "images and post-processing the last one overlap the model call; the same results)",
    )
    p.add_argument("--images", help="folder of images (COCO file_name is relative to it)")
    p.add_argument("--coco-json", default=None, help="COCO annotation file: which images to run and how to score them")
    p.add_argument(
        "--dataset",
        default=None,
        help="a registered dataset instead of --images/--coco-json: coco_2017_val or coco_2017_train (or, for a "
        "panoptic model, coco_2017_val_panoptic with its panoptic and semantic ground truth), found under "
        "$DETECTRON2_DATASETS (default ./datasets) as detectron2 lays it out",
    )
    p.add_argument("--panoptic-json", metavar="FILE", default=None,
                   help="[panoptic] COCO panoptic ground truth: score the panoptic results (PQ, SQ, RQ)")
    p.add_argument("--panoptic-root", metavar="DIR", default=None,
                   help="[panoptic] its PNG folder (default: the folder next to --panoptic-json named by its stem)")
    p.add_argument("--sem-seg-root", metavar="DIR", default=None,
                   help="[panoptic] semantic ground truth PNGs (things 0, stuff 1-53, void 255; "
                   "tools/prepare_panoptic_stuff.py makes them): score sem_seg (mIoU, fwIoU, mACC, pACC)")
    p.add_argument(
        "--output-dir", "--output", dest="output_dir", required=True,
        help="where results and metrics are written (with --bins: the folder of raw output bins)",
    )
    p.add_argument(
        "--bins", metavar="BINS",
        help="[bins] run the bins of preprocess_inputs_to_bin.py (BINS/bin_info.json) through --model and write "
        "raw output bins to --output instead of results",
    )
    p.add_argument(
        "--index-base", type=int, choices=[0, 1], default=0,
        help="[bins] number output files <stem>_<k>.bin from 0 (ais_bench, default) or 1 (older benchmark tools)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run: skip images already done (image mode: their results are kept in "
        "OUTPUT_DIR/coco_instances_results.partial.jsonl; --bins: their output bins are complete)")
    p.add_argument(
        "--batch-size", type=batch_size_int, default=None,
        help="images per forward pass (default 1; a static ONNX model's own)"
    )
    p.add_argument(
        "--pad-to",
        default=None,
        type=hw_type,
        metavar="HxW",
        help="[torch] pad every resized image to this fixed size (e.g. 1344x1344), as a static-shape model "
        "sees it; default: pad only to a multiple of the size divisibility, as upstream",
    )
    p.add_argument(
        "--static-padding", choices=list(PADDING_MODES), default=None,
        help="[torch] padding beyond each image's multiple of 32 (--pad-to, --batch-size 2+): 'ignore' (default) "
        "makes it have no effect, as upstream run on each image alone; 'include' computes on the padded input",
    )
    p.add_argument("--threads", type=threads_int, default=None,
                   help="CPU threads (default: the backend's choice; at most 4x the CPUs, at least 64)")
    p.add_argument("--allow-incomplete-weights", action="store_true", help="[torch] load a checkpoint with missing keys")
    add_ray_argument(p, "run on Ray", "images, models and --output-dir")
    p.add_argument(
        "--ray-actors", type=ray_actors_int, default=None, metavar="N",
        help="[ray] model actors, each one backend session with --threads threads (default 1); default: as many "
        "as the cluster's CPUs hold",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_overrides(p, "[torch] config overrides: KEY VALUE ...")
    return p


def _open_args(args: argparse.Namespace) -> tuple[str, str, dict]:
    """:func:`~centermask2.engine.sources.open_model`'s (model, runtime, options) for --backend torch,
    onnx or openvino, after checking the arguments fit it."""
    if args.backend == "torch":
        if not args.config_file:
            raise InputError("--backend torch needs --config-file (and MODEL.WEIGHTS /path/to/model.pth)")
        if args.model:
            raise InputError("--model is for --backend onnx or openvino; with --backend torch pass MODEL.WEIGHTS")
        _runtime_options(args)  # --device / --precision are not for torch
        return args.config_file, "torch", {
            "opts": list(args.opts),
            "pad_to": args.pad_to,
            "padding": args.static_padding or "ignore",
            "batch_size": args.batch_size,
            "threads": args.threads,
            "allow_incomplete": args.allow_incomplete_weights,
        }
    if not args.model:
        raise InputError(f"--backend {args.backend} needs --model model.onnx (export one with convert_model_into_onnx.py)")
    if args.config_file or args.opts or args.pad_to or args.static_padding:
        raise InputError(
            "--config-file, --pad-to, --static-padding and KEY VALUE overrides are for --backend torch; an ONNX "
            "model carries its own settings (export it with convert_model_into_onnx.py --static-padding ...)"
        )
    runtime = "openvino" if args.backend == "openvino" else "onnxruntime"
    return args.model, runtime, {"threads": args.threads, "batch_size": args.batch_size, **_runtime_options(args)}


def _runtime_options(args: argparse.Namespace) -> dict[str, str]:
    """The runtime's own options: --device, --precision and --requests only with --backend openvino,
    --provider only with ONNX Runtime."""
    if args.backend == "openvino":
        options = {"device": args.device or "CPU", "precision": args.precision or "fp32"}
        return {**options, "requests": args.requests} if args.requests is not None else options
    given = [name for name, value in (("--device", args.device), ("--precision", args.precision),
                                      ("--requests", args.requests)) if value is not None]
    if given:
        verb = "is" if len(given) == 1 else "are"
        raise InputError(f"{' and '.join(given)} {verb} for --backend openvino (ONNX Runtime takes --provider)")
    return {"provider": args.provider} if args.backend != "torch" else {}


def _run_bins(args: argparse.Namespace) -> int:
    """--bins mode: stage 2 of the offline pipeline. 0 ok, 1 bad input bins skipped, 2 setup error."""
    from ..engine.sources import open_model
    from ..fileio import ensure_writable_dir
    from ..offline.run import run_bins

    if args.backend == "torch":
        raise InputError("--bins runs an exported model: use --model model.onnx (--backend onnx or openvino)")
    if not args.model:
        raise InputError("--bins needs --model model.onnx, the model the bins were made for")
    unused = [name for name, value in (
        ("--images", args.images), ("--coco-json", args.coco_json), ("--dataset", args.dataset),
        ("--panoptic-json", args.panoptic_json), ("--panoptic-root", args.panoptic_root),
        ("--sem-seg-root", args.sem_seg_root), ("--config-file", args.config_file),
        ("--pad-to", args.pad_to), ("--static-padding", args.static_padding), ("--batch-size", args.batch_size),
    ) if value is not None] + (["KEY VALUE overrides"] if args.opts else [])
    if unused:
        raise InputError(
            f"{', '.join(unused)} cannot be used with --bins (the bins and the model fix the input; "
            "postprocess_bin_outputs.py scores the results)"
        )
    args.backend = args.backend or "onnx"
    ensure_writable_dir(args.output_dir, "--output")
    executor = make_executor(args)
    model, runtime, options = _open_args(args)
    source = open_model(model, runtime, **options)
    logger.info("Running %s on the bins of %s", source.label, args.bins)
    with executor:
        summary = run_bins(source, args.bins, args.output_dir, executor=executor, index_base=args.index_base,
                           resume=args.resume, progress=not args.no_progress, model_name=args.model)
    logger.info("Model: %s", summary.format())
    logger.info("Raw outputs: %s", args.output_dir)
    if summary.failed:
        logger.error("%d bin(s) were skipped and have no outputs:\n%s", len(summary.failed),
                     summary.format_failures(limit=len(summary.failed)))
        return EXIT_ITEMS_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 ok, 1 some images or bins failed, 2 bad arguments)."""
    return run_main(_main, argv, resumable=True)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    if args.ray:
        from ..engine.ray_executor import split_address

        args.ray, args.opts = split_address(args.ray, args.opts)
    if args.bins is not None:
        return _run_bins(args)
    if args.images is None and args.dataset is None:
        raise InputError(
            "give --images DIR (or --dataset coco_2017_val, or --bins BINS --model model.onnx for the "
            "offline pipeline)"
        )
    if args.dataset and (args.images or args.coco_json):
        raise InputError("--dataset names both the images and the annotations; give it alone, or --images/--coco-json")
    args.backend = args.backend or "torch"
    if args.index_base:
        raise InputError("--index-base is for --bins")

    from ..data.catalog import PANOPTIC_DATASETS, list_images, resolve_dataset
    from ..data.categories import category_mapping
    from ..engine.loop import run_to_folder
    from ..engine.sources import open_model
    from ..evaluation import evaluate_coco, load_coco_ground_truth
    from ..evaluation.ground_truth import evaluate_panoptic_inputs, find_ground_truth, read_panoptic_inputs
    from ..evaluation.panoptic import PANOPTIC_RESULTS_NAME
    from ..fileio import atomic_write_json, ensure_writable_dir

    truth = find_ground_truth(args.coco_json, args.panoptic_json, args.panoptic_root, args.sem_seg_root,
                              args.dataset if args.dataset in PANOPTIC_DATASETS else None, need_coco=True)
    if args.dataset:
        if args.dataset in PANOPTIC_DATASETS:
            from ..data.catalog import resolve_panoptic_dataset

            args.images = str(resolve_panoptic_dataset(args.dataset).images)
        else:
            args.images, truth.coco_json = resolve_dataset(args.dataset)
    args.coco_json = truth.coco_json
    ensure_writable_dir(args.output_dir, "--output-dir")
    records = list_images(args.images, args.coco_json)
    # the ground truth is checked before any image runs (a bad file: exit 2 now, not after the inference)
    gt = load_coco_ground_truth(args.coco_json, require_annotations=False) if args.coco_json else None
    if gt is not None and "annotations" not in gt:
        logger.warning("%s has no 'annotations' (an image list): writing results without metrics", args.coco_json)
        gt = None
    executor = make_executor(args)
    model, runtime, options = _open_args(args)
    source = open_model(model, runtime, **options)
    if truth.panoptic_json and source.panoptic is None:
        raise InputError(f"{source.label} is an instance model: --panoptic-json / --sem-seg-root / a panoptic --dataset "
                         "score a panoptic model's results (configs/centermask/panoptic_centermask_*.yaml)")
    ids = source.category_ids
    if args.coco_json:
        ids, _names = category_mapping(args.coco_json, len(source.category_ids))

    logger.info("Running %s on %d image(s) from %s", source.label, len(records), args.images)
    with executor:
        results, summary, results_path = run_to_folder(
            source, records, args.output_dir, ids, resume=args.resume, progress=not args.no_progress,
            executor=executor, panoptic_base=truth.panoptic_json,
        )
    logger.info("Inference: %s", summary.format())
    logger.info("Results: %s", results_path)
    if gt is not None or truth.panoptic_json:
        if summary.failed:
            logger.warning("%d image(s) could not be read; they count as having no detections", len(summary.failed))
        metrics = evaluate_coco(results, gt) if gt is not None else {}
        if truth.panoptic_json:
            panoptic = read_panoptic_inputs(Path(args.output_dir) / PANOPTIC_RESULTS_NAME, truth)
            metrics.update(evaluate_panoptic_inputs(panoptic))
        atomic_write_json(metrics, Path(args.output_dir) / "metrics.json")
        logger.info("Metrics: %s", Path(args.output_dir) / "metrics.json")
    if summary.failed:
        logger.error("%d image(s) could not be read and were skipped:\n%s", len(summary.failed),
                     summary.format_failures(limit=len(summary.failed)))
        return EXIT_ITEMS_FAILED
    return EXIT_OK
