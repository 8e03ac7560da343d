"""Draw CenterMask2 detections (masks, boxes, class names, scores) on images.

From a results file:   python visualizer.py --results OUT/coco_instances_results.json --images DIR --output-dir VIS
From an ONNX model:    python visualizer.py --model model.onnx --images DIR --output-dir VIS
From a checkpoint:     python visualizer.py --config-file CFG --images DIR --output-dir VIS MODEL.WEIGHTS m.pth
Side by side:          add --compare OTHER (a results .json or an .onnx model); prints how many detections match
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError
from .common import (
    PROVIDER_CHOICES,
    add_overrides,
    new_parser,
    parse_args,
    positive_int,
    run_main,
    setup_logging,
)

logger = logging.getLogger("visualizer")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "visualizer.py",
        "Draw instance masks, boxes, class names and scores from a results file, an ONNX model or a "
        "PyTorch checkpoint; optionally side by side with a second source.",
        "With --config-file, trailing KEY VALUE pairs override the config (MODEL.WEIGHTS m.pth ...).",
    )
    src = p.add_argument_group("source (exactly one)")
    src.add_argument("--results", help="COCO results JSON (coco_instances_results.json)")
    src.add_argument("--model", help="exported .onnx model")
    src.add_argument("--config-file", help="model config YAML for the PyTorch model (with MODEL.WEIGHTS)")
    p.add_argument("--images", required=True, help="image folder (COCO file_name is relative to it)")
    p.add_argument("--coco-json", default=None, help="COCO annotation file: image list, file names and class names")
    p.add_argument("--output-dir", required=True, help="where pictures are written")
    p.add_argument("--compare", default=None, metavar="SOURCE",
                   help="second source drawn side by side: a results .json or an .onnx model")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this (0.5)")
    p.add_argument("--score", choices=["box", "mask"], default="box",
                   help="which score to threshold and show: box score or mask_score (default box)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="picture format (default png)")
    p.add_argument("--max-images", type=positive_int, default=None, help="draw at most this many images")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default="cpu", help="ONNX Runtime provider")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help='what runs .onnx sources: ONNX Runtime (default) or OpenVINO (pip install -e ".[openvino]", CPU)')
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_overrides(p, "config overrides KEY VALUE ... (with --config-file)")
    return p


def _records_by_image(records: Sequence[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        out[int(r["image_id"])].append(r)
    return out


def _source_records(kind: str, value: str, args: argparse.Namespace, images: list) -> tuple[str, list[dict], dict[int, str]]:
    """(label, COCO records, {category id: name}) of one source."""
    from ..engine.loop import run_inference
    from ..engine.sources import open_model
    from ..evaluation import load_coco_results

    if kind == "results":
        path = Path(value)
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name, load_coco_results(value), {}
    if kind == "onnx":
        options = {"provider": args.provider} if args.runtime == "onnxruntime" else {}
        source = open_model(value, args.runtime, **options)
    else:
        source = open_model(value, "torch", opts=args.opts)
    records, _ = run_inference(source, images, progress=not args.no_progress)
    return source.label, records, dict(zip(source.category_ids, source.class_names))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 ok, 1 some images could not be read or written, 2 bad arguments)."""
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()

    import cv2
    from tqdm import tqdm

    from ..data.catalog import list_images
    from ..data.categories import COCO_CATEGORIES, load_coco_categories
    from ..data.transforms import read_image
    from ..errors import CenterMask2Error
    from ..evaluation.matching import summarize_match
    from ..fileio import ensure_writable_dir
    from ..visualization import draw_instances, filter_records, side_by_side

    given = [(k, v) for k, v in (("results", args.results), ("onnx", args.model), ("torch", args.config_file)) if v]
    if len(given) != 1:
        raise InputError("give exactly one source: --results R.json, --model m.onnx or --config-file CFG")
    if args.opts and given[0][0] != "torch":
        raise InputError(f"KEY VALUE overrides {args.opts[:2]} only apply with --config-file")
    if args.compare and not args.compare.endswith((".json", ".onnx")):
        raise InputError(f"--compare {args.compare!r}: give a results .json or an .onnx model")
    out_dir = ensure_writable_dir(args.output_dir, "--output-dir")
    images = list_images(args.images, args.coco_json)
    if args.max_images:
        images = images[: args.max_images]
    sources = [_source_records(*given[0], args, images)]
    if args.compare:
        sources.append(_source_records("results" if args.compare.endswith(".json") else "onnx", args.compare, args, images))

    names = {cid: name for cid, name in COCO_CATEGORIES}
    for _, _, source_names in sources:
        names.update(source_names)
    if args.coco_json:
        ids, class_names = load_coco_categories(args.coco_json)
        names.update(zip(ids, class_names))
    score_key = "mask_score" if args.score == "mask" else "score"
    per_source = [_records_by_image(records) for _, records, _ in sources]
    total_match = [0, 0, 0]
    written = 0
    unreadable: list[str] = []
    for rec in tqdm(images, desc="drawing", unit="img", disable=args.no_progress):
        try:
            image = read_image(rec.path, format="BGR")
        except (CenterMask2Error, OSError) as exc:
            logger.warning("skipping %s: %s", rec.file_name, exc)
            unreadable.append(rec.file_name)
            continue
        drawn = []
        kept_per_source = []
        for by_image in per_source:
            kept = filter_records(by_image.get(rec.image_id, []), args.score_threshold, score_key)
            kept_per_source.append(kept)
            drawn.append(draw_instances(image, kept, names, score_key=score_key))
        stem = Path(rec.file_name).with_suffix("").as_posix().replace("/", "__")
        if len(sources) == 1:
            picture, path = drawn[0], out_dir / f"{stem}.{args.format}"
        else:
            summary = summarize_match(*kept_per_source)
            total_match = [total_match[0] + summary.left, total_match[1] + summary.right, total_match[2] + summary.matched]
            logger.info("%s: %s", rec.file_name, summary.format())
            picture = side_by_side(
                drawn[0], drawn[1], f"{sources[0][0]} ({summary.left})", f"{sources[1][0]} ({summary.right})"
            )
            path = out_dir / f"{stem}_compare.{args.format}"
        if not cv2.imwrite(str(path), picture):
            logger.error("error: could not write %s", path)
            return EXIT_ITEMS_FAILED
        written += 1
    logger.info("Drew %d image(s) into %s (score >= %.2f, %s score)", written, out_dir, args.score_threshold, args.score)
    if len(sources) == 2:
        logger.info(
            "Comparison over all images: %d vs %d detections, %d matched (same class, box IoU >= 0.9)", *total_match
        )
    if unreadable:
        logger.error("%d image(s) could not be read: %s", len(unreadable), ", ".join(unreadable))
        return EXIT_ITEMS_FAILED
    return EXIT_OK
