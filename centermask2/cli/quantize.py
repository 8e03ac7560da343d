"""Quantize an exported model to int8 (post-training, static, calibrated on your images).

    python tools/quantize.py --model model_dynamic.onnx --calibration datasets/coco/val2017 \\
        --count 200 --output model_dynamic_int8.onnx

The result runs wherever the float32 model runs (``tester.py --backend onnx|openvino``, the
``.bin`` pipeline); its metadata says how it was quantized.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import EXIT_OK, InputError
from .common import new_parser, parse_args, positive_int, run_main, setup_logging

logger = logging.getLogger("quantize")


def build_parser() -> argparse.ArgumentParser:
    from ..export.quantize import CALIBRATION_METHODS, DEFAULT_KEEP_FP32

    p = new_parser(
        "tools/quantize.py",
        "Post-training static int8 quantization (ONNX Runtime QDQ) of a model exported by "
        "convert_model_into_onnx.py, calibrated on a folder of images. Box decoding, NMS, RoIAlign, "
        "the sigmoids and the heads' last layers stay float32; inputs and outputs keep their dtypes.",
    )
    p.add_argument("--model", required=True, help="the float32 .onnx (static or dynamic)")
    p.add_argument("--calibration", required=True, metavar="DIR",
                   help="folder of calibration images, like those the model will see (not your test set)")
    p.add_argument("--count", type=positive_int, default=64,
                   help="use the first N images of the folder, sorted by name (default 64)")
    p.add_argument("--method", choices=list(CALIBRATION_METHODS), default="percentile",
                   help="activation range calibration (default percentile: the 99.999th percentile of the values; "
                   "minmax: their whole range; entropy: the range keeping the distribution closest)")
    p.add_argument("--keep-fp32", default=DEFAULT_KEEP_FP32, metavar="REGEX",
                   help="module paths whose layers stay float32 (default: the heads' last layers); '' for none")
    p.add_argument("--output", required=True, help="the int8 .onnx to write")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 written, 2 bad arguments or input)."""
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()

    from ..data import list_images
    from ..export.quantize import QuantizeSettings, quantize_int8
    from ..fileio import check_input_file, check_output_file

    check_input_file(args.model, "--model")  # a regular file: not a folder, a pipe or a device
    check_output_file(args.output, "--output")
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise InputError("--output must differ from --model (the float32 model is the input)")
    settings = QuantizeSettings(method=args.method, keep_fp32=args.keep_fp32)
    settings.validate()
    images = list_images(args.calibration)  # MissingFileError when there are none
    chosen = [r.path for r in images[: args.count]]
    if len(chosen) < args.count:
        logger.warning("--calibration %s has %d images, fewer than --count %d", args.calibration, len(chosen), args.count)
    summary = quantize_int8(args.model, args.output, chosen, settings, progress=not args.no_progress)
    logger.info(summary.format())
    return EXIT_OK
