"""Export a CenterMask2 checkpoint to one ONNX graph of standard operators.

Static 1344x1344 uint8 model (for offline engines and .bin pipelines):

    python convert_model_into_onnx.py --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        --output V_39_1344.onnx MODEL.WEIGHTS centermask2-V-39-eSE-FPN-ms-3x.pth

Dynamic model (any batch and any H, W multiple of 32; upstream's default padding):

    python convert_model_into_onnx.py --config-file ... --output V_39_dynamic.onnx --dynamic MODEL.WEIGHTS ...
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ..contract import PADDING_MODES
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError, MissingFileError
from .common import (
    add_config_arguments,
    add_overrides,
    batch_size_int,
    hw_type,
    max_detections_int,
    new_parser,
    opset_int,
    parse_args,
    run_main,
    setup_logging,
)

logger = logging.getLogger("convert_model_into_onnx")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "convert_model_into_onnx.py",
        "Export a CenterMask2 checkpoint (detectron2 .pth/.pkl) to ONNX: one graph from raw pixels "
        "to boxes, scores, classes, masks and mask scores, default ONNX domain only.",
        "Trailing KEY VALUE pairs override the config; MODEL.WEIGHTS /path/to/model.pth is required.",
    )
    add_config_arguments(p, required=True)
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--input-size", default=(1344, 1344), type=hw_type, metavar="HxW",
                   help="static input size (default 1344x1344)")
    p.add_argument("--batch-size", type=batch_size_int, default=1, help="static batch size (default 1, at most 1024)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width instead of a static size")
    p.add_argument(
        "--input-dtype", choices=["uint8", "float32"], default="uint8", help="raw BGR pixel dtype the graph takes"
    )
    p.add_argument(
        "--static-padding", choices=list(PADDING_MODES), default="ignore",
        help="padding beyond each image's multiple of 32 (a static size, or a batch of different sizes): "
        "'ignore' (default) makes it have no effect, so every image gets upstream's published result for it; "
        "'include' computes on the padded input, as upstream run on the padded image",
    )
    p.add_argument("--opset", type=opset_int, default=None,
                   help="ONNX opset, 16 to the highest the exporter writes (default 17; 19, the first with DeformConv, "
                   "for _dcn_ models)")
    p.add_argument(
        "--max-detections", type=max_detections_int, default=None,
        help="output rows per image (default: MODEL.FCOS.POST_NMS_TOPK_TEST; at most 10000)",
    )
    p.add_argument("--coco-json", default=None, help="COCO annotation file giving class names / category ids "
                   "(default: the 80 COCO classes)")
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    p.add_argument("--verify", metavar="IMAGE", default=None,
                   help="run PyTorch and ONNX Runtime on IMAGE and exit 1 if they disagree: fewer than 95%% of "
                   "the detections match, or boxes, scores, masks, mask scores (and a panoptic model's sem_seg "
                   "logits) differ by more than their bounds (centermask2.export.verify.BOUNDS); the message "
                   "names each output that disagreed")
    add_overrides(p)
    return p


def _check_verify_image(path: str) -> None:
    """Read the ``--verify`` image before exporting: an unreadable one is a bad argument (exit 2),
    not a disagreement between PyTorch and ONNX found after the export."""
    from ..data.transforms import read_image
    from ..errors import CenterMask2Error

    if not Path(path).is_file():
        raise MissingFileError(f"--verify image not found: {path!r}")
    try:
        read_image(path)
    except (CenterMask2Error, OSError) as exc:
        raise InputError(f"--verify image {path!r} cannot be read: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 exported, 1 --verify found a disagreement, 2 bad arguments)."""
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()

    from ..checkpoint import check_weights_path, load_weights
    from ..config import load_config
    from ..data.categories import category_mapping
    from ..export import ExportSettings, default_opset, export_onnx
    from ..export.onnx import check_opset, check_opset_range, model_nbytes
    from ..fileio import check_free_space, check_output_file
    from ..modeling import build_model

    if args.opset is not None:
        check_opset_range(args.opset)
    opts = list(args.opts)
    if args.max_detections is not None:
        opts += ["MODEL.FCOS.POST_NMS_TOPK_TEST", str(args.max_detections)]
    check_output_file(args.output, "--output")
    if args.verify:
        _check_verify_image(args.verify)
    cfg = load_config(args.config_file, opts)
    check_weights_path(cfg.MODEL.WEIGHTS)
    model = build_model(cfg)
    # the weights, 1.2x for the graph and metadata around them: found now, not after the export
    check_free_space(args.output, int(model_nbytes(model) * 1.2) + (1 << 20), "--output")
    opset = args.opset if args.opset is not None else default_opset(model)
    settings = ExportSettings(
        input_size=args.input_size,
        batch_size=args.batch_size,
        dynamic=args.dynamic,
        input_dtype=args.input_dtype,
        opset=opset,
        padding=args.static_padding,
    )
    settings.validate(model.size_divisibility)
    check_opset(model, opset)
    if args.dynamic:
        # the sample used for tracing: small and a multiple of the divisibility
        d = model.size_divisibility
        settings = ExportSettings(
            input_size=(-(-640 // d) * d, -(-960 // d) * d),
            batch_size=1,
            dynamic=True,
            input_dtype=args.input_dtype,
            opset=opset,
            padding=args.static_padding,
        )
    ids, names = category_mapping(args.coco_json, int(cfg.MODEL.FCOS.NUM_CLASSES))
    load_weights(model, cfg.MODEL.WEIGHTS)

    path = export_onnx(model, cfg, args.output, settings, class_names=names, category_ids=ids, simplify=args.simplify)
    logger.info("Exported %s", path)
    if args.verify:
        from ..export.verify import verify_onnx

        report = verify_onnx(model, path, args.verify)
        print(report.format())
        if not report.ok:
            logger.error("PyTorch and ONNX Runtime disagree: %s", "; ".join(report.problems))
            return EXIT_ITEMS_FAILED
        logger.info("PyTorch and ONNX Runtime agree.")
    return EXIT_OK
