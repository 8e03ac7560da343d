"""Draw CenterMask2 detections (masks, boxes, class names, scores) on images.

From a results file:   python visualizer.py --results OUT/coco_instances_results.json --images DIR --output-dir VIS
From an ONNX model:    python visualizer.py --model model.onnx --images DIR --output-dir VIS
From a checkpoint:     python visualizer.py --config-file CFG --images DIR --output-dir VIS MODEL.WEIGHTS m.pth
Side by side:          add --compare OTHER (a results .json or an .onnx model); prints how many detections match

Panoptic models: stuff regions (translucent fill per category, named) are drawn under the instances,
from the ``panoptic_results.json`` next to a results file (or ``--panoptic-results P.json``) or from
a panoptic model's own output (written to a temporary folder); ``--no-stuff`` draws instances only.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, CenterMask2Error, InputError
from .common import (
    PROVIDER_CHOICES,
    add_overrides,
    new_parser,
    parse_args,
    positive_int,
    run_main,
    setup_logging,
    unit_float,
)

logger = logging.getLogger("visualizer")

#: the panoptic results file that tester.py writes next to coco_instances_results.json
PANOPTIC_NAME = "panoptic_results.json"


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "visualizer.py",
        "Draw instance masks, boxes, class names and scores from a results file, an ONNX model or a "
        "PyTorch checkpoint; optionally side by side with a second source. Panoptic sources also get their "
        "stuff regions (filled and named) under the instances.",
        "With --config-file, trailing KEY VALUE pairs override the config (MODEL.WEIGHTS m.pth ...). "
        f"A results file's stuff comes from the {PANOPTIC_NAME} next to it, if there is one.",
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
    p.add_argument("--panoptic-results", default=None, metavar="JSON",
                   help=f"panoptic results (COCO panoptic JSON, PNGs in the folder named by its stem) whose stuff is "
                        f"drawn under the --results detections (default: {PANOPTIC_NAME} next to the results file)")
    p.add_argument("--no-stuff", action="store_true",
                   help="draw instances only, not the stuff regions of panoptic sources")
    p.add_argument("--score-threshold", type=unit_float, default=0.5,
                   help="draw detections scoring at least this (0 to 1; default 0.5)")
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


@dataclass
class _Source:
    """One side of the drawing: its detections and, for a panoptic source, its panoptic results."""

    label: str
    records: list[dict]
    names: dict[int, str]
    #: the panoptic results (None: instances only, or --no-stuff)
    panoptic: Any = None
    #: dataset category id -> (name, isthing) of the panoptic categories
    categories: Mapping[int, tuple[str, bool]] = field(default_factory=dict)
    #: images drawn without stuff because the panoptic results have none for them
    missing: list[str] = field(default_factory=list)


def _check_score(source: _Source, score: str) -> None:
    """``--score mask`` needs a ``mask_score`` in every detection of ``source`` (else the box score
    would be thresholded and shown in its place, labelled as the mask score).

    Raises:
        InputError: a detection without ``mask_score``; the message names the source and the fix.
    """
    if score != "mask":
        return
    lacking = sum("mask_score" not in r for r in source.records)
    if lacking:
        raise InputError(f"--score mask: {lacking} of the {len(source.records)} detections of {source.label} have no "
                         "'mask_score' (a model without a MaskIoU head, or results written without it); use "
                         "--score box")


def _open_panoptic(json_path: str | Path, png_root: str | Path | None = None) -> tuple[Any, dict[int, tuple[str, bool]]]:
    """Read and check a panoptic results file; (annotations, categories). Every segment's category
    must be known: the file's ``categories``, else COCO panoptic's."""
    from ..data.panoptic_categories import coco_panoptic_separated
    from ..evaluation.panoptic import read_panoptic_results

    panoptic = read_panoptic_results(json_path, png_root)
    categories = dict(panoptic.categories) or dict(coco_panoptic_separated().categories)
    for image in panoptic.images.values():
        unknown = [int(c) for c in image.segments.category_ids if int(c) not in categories]
        if unknown:
            raise InputError(
                f"{str(json_path)!r}: image {image.image_id} has a segment of category {unknown[0]}, which is no COCO "
                "panoptic category; give the file a 'categories' list (id, name, isthing)"
            )
    return panoptic, categories


def picture_stems(images: Sequence[Any], fmt: str) -> dict[int, str]:
    """The picture name (without extension) of every image: its file name with folders joined by ``__``
    (``a/b.png`` -> ``a__b``). Names that would collide (``a__b.png`` and ``a/b.png``, ``x.png`` and
    ``x.jpg``, names differing only in case) get ``_id<image id>`` appended, with a warning.

    Raises:
        InputError: names still collide after that (an image named like another's suffixed name).
    """
    stems = {rec.image_id: Path(rec.file_name).with_suffix("").as_posix().replace("/", "__") for rec in images}
    groups: dict[str, list[Any]] = defaultdict(list)
    for rec in images:
        groups[stems[rec.image_id].lower()].append(rec)
    for group in groups.values():
        if len(group) > 1:
            names = [rec.file_name for rec in group]
            logger.warning("%s would %s be drawn as %s.%s: each is written as <name>_id<image id>.%s instead",
                           " and ".join(repr(n) for n in names), "both" if len(names) == 2 else "all",
                           stems[group[0].image_id], fmt, fmt)
            for rec in group:
                stems[rec.image_id] = f"{stems[rec.image_id]}_id{rec.image_id}"
    final: dict[str, int] = {}
    for image_id, stem in stems.items():
        if stem.lower() in final:
            raise InputError(f"images {final[stem.lower()]} and {image_id} would both be drawn as {stem}.{fmt}; rename one")
        final[stem.lower()] = image_id
    return stems


def _results_label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _open_source(kind: str, value: str, args: argparse.Namespace, images: list, stack: ExitStack,
                 panoptic_json: str | None = None) -> _Source:
    """Run or read one source; a panoptic model writes its PNGs into a temporary folder that
    ``stack`` removes."""
    from ..engine.loop import run_inference
    from ..engine.sources import open_model
    from ..evaluation import load_coco_results
    from ..evaluation.panoptic import write_panoptic_json

    if kind == "results":
        path = Path(value)
        source = _Source(_results_label(path), load_coco_results(value), {})
        if args.no_stuff:
            return source
        found = panoptic_json is None and (path.parent / PANOPTIC_NAME).is_file()
        if found:
            panoptic_json = str(path.parent / PANOPTIC_NAME)
        if panoptic_json is not None:
            try:
                source.panoptic, source.categories = _open_panoptic(panoptic_json)
            except CenterMask2Error as exc:
                if not found:
                    raise
                raise type(exc)(f"{exc} (found next to {str(path)!r}; --no-stuff draws the instances only)") from None
            logger.info("%s: stuff from %s", source.label, panoptic_json)
        return source
    if kind == "onnx":
        options = {"provider": args.provider} if args.runtime == "onnxruntime" else {}
        model = open_model(value, args.runtime, **options)
    else:
        model = open_model(value, "torch", opts=args.opts)
    tmp = None
    if model.panoptic is not None:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="visualizer-panoptic-")))
    records, summary = run_inference(model, images, progress=not args.no_progress, output_dir=tmp)
    source = _Source(model.label, records, dict(zip(model.category_ids, model.class_names)))
    if tmp is not None and not args.no_stuff:
        json_path = write_panoptic_json(tmp / PANOPTIC_NAME, summary.panoptic)
        source.panoptic, source.categories = _open_panoptic(json_path)
    return source


def _stuff_of(source: _Source, rec: Any, hw: tuple[int, int]) -> tuple[Any, list[tuple[int, int]]] | None:
    """(segment-id map, stuff segments) of one image, or None when the source has none for it."""
    from ..visualization.panoptic import stuff_segments

    if source.panoptic is None:
        return None
    image = source.panoptic.images.get(rec.image_id)
    if image is None:
        source.missing.append(rec.file_name)
        return None
    ids = source.panoptic.read_ids(rec.image_id, hw, f"image {rec.file_name!r}")
    segments = stuff_segments(zip(image.segments.ids.tolist(), image.segments.category_ids.tolist()),
                              source.categories)
    return ids, segments


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 ok, 1 some images could not be read or written, 2 bad arguments)."""
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    with ExitStack() as stack:
        return _draw_all(parse_args(build_parser(), argv), stack)


def _draw_all(args: argparse.Namespace, stack: ExitStack) -> int:
    setup_logging()

    import cv2
    from tqdm import tqdm

    from ..data.catalog import list_images
    from ..data.categories import COCO_CATEGORIES, load_coco_categories
    from ..data.transforms import read_image
    from ..evaluation.matching import summarize_match
    from ..fileio import ensure_writable_dir
    from ..visualization import draw_instances, filter_records, side_by_side
    from ..visualization.panoptic import draw_stuff, match_stuff

    given = [(k, v) for k, v in (("results", args.results), ("onnx", args.model), ("torch", args.config_file)) if v]
    if len(given) != 1:
        raise InputError("give exactly one source: --results R.json, --model m.onnx or --config-file CFG")
    if args.opts and given[0][0] != "torch":
        raise InputError(f"KEY VALUE overrides {args.opts[:2]} only apply with --config-file")
    if args.compare and not args.compare.endswith((".json", ".onnx")):
        raise InputError(f"--compare {args.compare!r}: give a results .json or an .onnx model")
    if args.panoptic_results and given[0][0] != "results":
        raise InputError("--panoptic-results goes with --results; a panoptic model draws its own stuff")
    if args.panoptic_results and args.no_stuff:
        raise InputError("--panoptic-results and --no-stuff contradict each other: give one of them")
    out_dir = ensure_writable_dir(args.output_dir, "--output-dir")
    images = list_images(args.images, args.coco_json)
    if args.max_images:
        images = images[: args.max_images]
    stems = picture_stems(images, args.format)  # before any model runs
    sources = [_open_source(*given[0], args, images, stack, args.panoptic_results)]
    _check_score(sources[0], args.score)
    if args.compare:
        sources.append(_open_source("results" if args.compare.endswith(".json") else "onnx", args.compare, args,
                                    images, stack))
        _check_score(sources[1], args.score)
    compare_stuff = len(sources) == 2 and all(s.panoptic is not None for s in sources)
    if len(sources) == 2 and not compare_stuff and any(s.panoptic is not None for s in sources):
        only = next(s.label for s in sources if s.panoptic is not None)
        logger.warning("only %s has stuff regions: its stuff is drawn but not compared", only)

    names = {cid: name for cid, name in COCO_CATEGORIES}
    for source in sources:
        names.update(source.names)
    if args.coco_json:
        ids, class_names = load_coco_categories(args.coco_json)
        names.update(zip(ids, class_names))
    score_key = "mask_score" if args.score == "mask" else "score"
    per_source = [_records_by_image(source.records) for source in sources]
    total_match = [0, 0, 0]
    total_stuff = [0, 0, 0]
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
        stuff_per_source = []
        for source, by_image in zip(sources, per_source):
            kept = filter_records(by_image.get(rec.image_id, []), args.score_threshold, score_key)
            kept_per_source.append(kept)
            stuff = _stuff_of(source, rec, image.shape[:2])
            stuff_per_source.append(stuff)
            base = image
            if stuff is not None:
                stuff_names = {cid: name for cid, (name, _) in source.categories.items()}
                base, _ = draw_stuff(image, stuff[0], stuff[1], stuff_names)
            drawn.append(draw_instances(base, kept, names, score_key=score_key))
        stem = stems[rec.image_id]
        if len(sources) == 1:
            picture, path = drawn[0], out_dir / f"{stem}.{args.format}"
        else:
            summary = summarize_match(*kept_per_source)
            total_match = [total_match[0] + summary.left, total_match[1] + summary.right, total_match[2] + summary.matched]
            line = summary.format()
            if compare_stuff and all(s is not None for s in stuff_per_source):
                (ids_a, seg_a), (ids_b, seg_b) = stuff_per_source
                stuff_match = match_stuff(ids_a, seg_a, ids_b, seg_b)
                total_stuff = [total_stuff[0] + stuff_match.left, total_stuff[1] + stuff_match.right,
                               total_stuff[2] + stuff_match.matched]
                line = f"{line}; {stuff_match.format()}"
            logger.info("%s: %s", rec.file_name, line)
            titles = [
                f"{source.label} ({n})" if stuff is None else f"{source.label} ({n}, {len(stuff[1])} stuff)"
                for source, n, stuff in zip(sources, (summary.left, summary.right), stuff_per_source)
            ]
            picture = side_by_side(drawn[0], drawn[1], *titles)
            path = out_dir / f"{stem}_compare.{args.format}"
        if not cv2.imwrite(str(path), picture):
            logger.error("error: could not write %s", path)
            return EXIT_ITEMS_FAILED
        written += 1
    logger.info("Drew %d image(s) into %s (score >= %.2f, %s score)", written, out_dir, args.score_threshold, args.score)
    for source in sources:
        if source.missing:
            logger.warning("%s: %d image(s) have no panoptic results and were drawn without stuff: %s", source.label,
                           len(source.missing), ", ".join(source.missing[:10]))
    if len(sources) == 2:
        logger.info(
            "Comparison over all images: %d vs %d detections, %d matched (same class, box IoU >= 0.9)", *total_match
        )
        if compare_stuff:
            logger.info("Stuff over all images: %d vs %d segments, %d matched (same category, IoU > 0.5)", *total_stuff)
    if unreadable:
        logger.error("%d image(s) could not be read: %s", len(unreadable), ", ".join(unreadable))
        return EXIT_ITEMS_FAILED
    return EXIT_OK
