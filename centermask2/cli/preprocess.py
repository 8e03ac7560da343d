"""Preprocess images into ``.bin`` network inputs for an offline engine (stage 1 of 3).

With an exported model (every setting comes from its metadata):

    python preprocess_inputs_to_bin.py --model V_39_1344.onnx --images datasets/coco/val2017 \\
        --coco-json datasets/coco/annotations/instances_val2017.json --output bins/val2017 --workers 4

Without one (the config's resize rule, a size and dtype of your choice):

    python preprocess_inputs_to_bin.py --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        --input-size 1344x1344 --input-dtype uint8 --images datasets/coco/val2017 --output bins/val2017

On a Ray cluster (``pip install -e ".[ray]"``), one task per image, BINS on a path every node shares:

    python preprocess_inputs_to_bin.py --model V_39_1344.onnx --images /shared/val2017 --output /shared/bins --ray auto

Writes ``BINS/<stem>.bin``, ``BINS/image_sizes/<stem>.bin``, ``BINS/bin_info.json`` and
``BINS/bin_info.info`` (layout: ``centermask2/offline/layout.py``). Exit status: 0 when every image was
written, 1 when some failed (listed at the end; the others are written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError
from .common import (
    add_config_arguments,
    add_overrides,
    add_ray_argument,
    hw_type,
    make_executor,
    new_parser,
    parse_args,
    run_main,
    setup_logging,
    workers_int,
)

logger = logging.getLogger("preprocess_inputs_to_bin")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of this script."""
    p = new_parser(
        "preprocess_inputs_to_bin.py",
        "Turn images into raw .bin inputs of a static-shape CenterMask2 model: read (EXIF, BGR), "
        "ResizeShortestEdge, zero padding to the fixed size, raw pixels in the model's dtype "
        "(the graph normalizes), plus image_sizes bins and bin_info.json / bin_info.info.",
        "Without --model, trailing KEY VALUE pairs override the config, e.g. INPUT.MIN_SIZE_TEST 800.\n"
        "Exit status: 0 all images written, 1 some failed (listed), 2 bad arguments.",
    )
    p.add_argument("--model", help="exported .onnx model; its metadata gives every setting")
    add_config_arguments(p, help="model config YAML, when there is no exported model")
    p.add_argument("--images", required=True, help="folder of images (COCO file_name is relative to it)")
    p.add_argument("--coco-json", default=None, help="COCO annotation file: which images, in which order, which ids")
    p.add_argument("--output", required=True, metavar="BINS", help="folder the bins and info files are written to")
    p.add_argument(
        "--input-size",
        default=None,
        type=hw_type,
        metavar="HxW",
        help="padded input size, a multiple of 32 (e.g. 1344x1344): required with --config-file or a dynamic "
        "model; a static model's own otherwise",
    )
    p.add_argument(
        "--input-dtype",
        choices=["uint8", "float32"],
        default=None,
        help="dtype of the images bins (the model's; default uint8 with --config-file)",
    )
    p.add_argument("--workers", type=workers_int, default=None,
                   help="parallel processes (default 1; at most 4x the CPUs, at least 64)")
    add_ray_argument(p, "write the bins with Ray tasks, one per image", "--images and --output")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep bins an interrupted run already wrote (right byte size, matching image); redo the rest",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_overrides(p, "[--config-file] config overrides: KEY VALUE ...")
    return p


def _spec(args: argparse.Namespace):
    """The PreprocessSpec the arguments ask for (raises InputError on contradictions)."""
    from ..offline.preprocess import spec_from_config, spec_from_model

    size = args.input_size
    if args.model:
        if args.config_file or args.opts:
            raise InputError(
                "--config-file and KEY VALUE overrides are for runs without --model; an ONNX model carries its "
                "own settings"
            )
        return spec_from_model(args.model, input_size=size, input_dtype=args.input_dtype)
    if not args.config_file:
        raise InputError("give --model model.onnx, or --config-file CFG.yaml with --input-size HxW")
    if size is None:
        raise InputError("--config-file needs --input-size HxW (the fixed size every image is padded to), e.g. 1344x1344")
    return spec_from_config(args.config_file, size, args.input_dtype or "uint8", args.opts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 ok, 1 some images failed, 2 bad arguments, 130 Ctrl-C)."""
    return run_main(_main, argv, resumable=True)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    if args.ray:
        from ..engine.ray_executor import split_address

        args.ray, args.opts = split_address(args.ray, args.opts)

    from ..data.catalog import list_images
    from ..offline.preprocess import bin_stems, prepare_output_dir, preprocess_to_bins

    executor = make_executor(args)
    spec = _spec(args)
    records = list_images(args.images, args.coco_json)
    bin_stems(records)
    prepare_output_dir(args.output, spec, args.resume, records)
    with executor:
        summary = preprocess_to_bins(records, args.output, spec, executor=executor, resume=args.resume,
                                     progress=not args.no_progress)
    logger.log(logging.INFO if summary.ok else logging.ERROR, "%s", summary.format())
    logger.info("Bins and bin_info.json / bin_info.info: %s", args.output)
    return EXIT_OK if summary.ok else EXIT_ITEMS_FAILED
