"""COCO-format results and bbox/segm evaluation, as centermask2's ``COCOEvaluator``.

centermask2 (``centermask/evaluation/coco_evaluation.py``) differs from detectron2's evaluator
in one point: when results carry ``mask_score``, the segm evaluation ranks detections by it
(``score`` is replaced by ``mask_score``) and drops ``bbox`` so that COCO uses the mask area.

Metric conventions follow the golden reference files: overall metrics are pycocotools'
``stats * 100`` (so an undefined metric, e.g. APl with no large ground truth, is ``-100.0``
where detectron2 would log NaN) and per-category AP lists only categories that have ground
truth (detectron2 reports NaN for the others).

Files other tools write are read as pycocotools / detectron2 read them, checked before any work:
:func:`load_coco_ground_truth` fills what detectron2 fills (``area`` from the mask or box,
``iscrowd`` 0, ``bbox`` from the mask, an image's size from its RLE masks) and refuses by name what
pycocotools would crash on or score as garbage; :func:`load_coco_results` accepts polygon and
uncompressed-RLE masks (converted with the image size at evaluation) and refuses masks that do not
decode (:mod:`.rle`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.categories import load_coco_categories, load_coco_dict
from ..errors import InputError
from ..fileio import atomic_write_json, read_json
from .rle import polygon_problem, rle_problems, rle_size, to_compressed_rle

__all__ = [
    "instances_to_coco_json",
    "load_coco_categories",
    "load_coco_ground_truth",
    "load_coco_results",
    "evaluate_coco",
    "format_table",
]

logger = logging.getLogger(__name__)

_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def instances_to_coco_json(
    result: Mapping[str, torch.Tensor],
    image_id: int,
    contiguous_to_dataset_id: Sequence[int] | Mapping[int, int],
) -> list[dict[str, Any]]:
    """Convert one image's post-processed detections to COCO result dicts.

    Same records as centermask2's ``instances_to_coco_json`` after the evaluator maps the
    category ids: ``{"image_id", "category_id", "bbox", "score"}`` plus ``"segmentation"``
    (RLE with ``counts`` as str) and ``"mask_score"`` when the result has masks / mask scores.

    Args:
        result: output of :func:`centermask2.modeling.postprocessing.detector_postprocess`: ``boxes``
            Tensor[K, 4] xyxy in original pixels, ``scores`` [K], ``classes`` [K] contiguous ids,
            optional ``masks`` [K, H, W] bool and ``mask_scores`` [K].
        image_id: the COCO image id.
        contiguous_to_dataset_id: list (index = contiguous id) or dict mapping contiguous class
            ids to dataset category ids (see :func:`load_coco_categories`).

    Returns:
        list of K dicts; ``bbox`` is [x, y, w, h] in original-image pixels.
    """
    boxes = torch.as_tensor(result["boxes"])
    num = boxes.shape[0]
    if num == 0:
        return []
    # XYXY -> XYWH in the boxes' own dtype (float32), as detectron2's BoxMode.convert.
    xywh = boxes.clone()
    xywh[:, 2] -= xywh[:, 0]
    xywh[:, 3] -= xywh[:, 1]
    bbox_list = xywh.tolist()
    scores = torch.as_tensor(result["scores"]).tolist()
    classes = torch.as_tensor(result["classes"]).tolist()

    def to_dataset_id(contiguous: int) -> int:
        try:
            if isinstance(contiguous_to_dataset_id, Mapping):
                return int(contiguous_to_dataset_id[contiguous])
            if contiguous < 0:
                raise IndexError(contiguous)
            return int(contiguous_to_dataset_id[contiguous])
        except (KeyError, IndexError):
            raise InputError(
                f"Predicted class {contiguous} has no dataset category id "
                f"({len(contiguous_to_dataset_id)} categories known); the model's NUM_CLASSES "
                "does not match the dataset's categories."
            ) from None

    rles = None
    if "masks" in result and result["masks"] is not None:
        masks = torch.as_tensor(result["masks"])
        rles = []
        for mask in masks:
            rle = mask_util.encode(np.array(mask.numpy()[:, :, None], order="F", dtype=np.uint8))[0]
            # counts is bytes; JSON needs str (utf-8 is what pycocotools decodes as well).
            rle["counts"] = rle["counts"].decode("utf-8")
            rles.append(rle)
    mask_scores = None
    if rles is not None and "mask_scores" in result and result["mask_scores"] is not None:
        mask_scores = torch.as_tensor(result["mask_scores"]).tolist()

    records: list[dict[str, Any]] = []
    for k in range(num):
        record: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": to_dataset_id(int(classes[k])),
            "bbox": bbox_list[k],
            "score": scores[k],
        }
        if rles is not None:
            record["segmentation"] = rles[k]
            if mask_scores is not None:
                record["mask_score"] = mask_scores[k]
        records.append(record)
    return records


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SEGMENTATION_FORMS = "an RLE dict {'size': [h, w], 'counts': ...} or a list of polygons"


def _malformed(rec: Mapping[str, Any]) -> str:
    """What is wrong with one result record's values, or ``""`` (RLE masks are checked apart)."""
    bbox = rec["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)):
        return f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    for key in ("image_id", "category_id"):
        if not _is_int(rec[key]):
            return f"'{key}' must be an integer, got {rec[key]!r}"
    for key in ("score", "mask_score"):
        if key in rec and not _finite_number(rec[key]):
            return f"'{key}' must be a finite number, got {rec[key]!r}"
    seg = rec.get("segmentation")
    if "segmentation" in rec and not isinstance(seg, dict):
        problem = polygon_problem(seg)
        if problem:
            return f"'segmentation' must be {_SEGMENTATION_FORMS}: {problem}, got {str(seg)[:60]}"
    return ""


def load_coco_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load and validate a COCO results file (``coco_instances_results.json``).

    Every entry needs ``image_id`` and ``category_id`` (integers), ``bbox`` (4 finite numbers) and
    ``score`` (finite); ``mask_score`` is finite when given; ``segmentation``, when given, is a
    compressed or uncompressed RLE dict that decodes to exactly its ``size`` (checked without
    pycocotools, which reads garbage from one that does not), or a list of polygons (converted with
    the image size at evaluation, as ``loadRes`` cannot).

    Raises:
        MissingFileError: ``path`` does not exist.
        InputError: not JSON, or an entry is malformed; the message names the entry and the key.
    """
    path = os.fspath(path)
    data = read_json(path, "results file")
    if isinstance(data, dict) and "annotations" in data:
        raise InputError(
            f"{path!r} looks like a COCO annotation file, not a results list; pass it as the "
            "ground truth and give the detections (coco_instances_results.json) as results."
        )
    if not isinstance(data, list):
        raise InputError(
            f"{path!r} is not a COCO results file: expected a JSON list of detections, got "
            f"{type(data).__name__}."
        )
    rles: list[tuple[int, dict]] = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or any(k not in rec for k in _RESULT_KEYS):
            raise InputError(
                f"Entry {i} of results file {path!r} is not a COCO detection; every entry needs "
                f"the keys {list(_RESULT_KEYS)}."
            )
        problem = _malformed(rec)
        if problem:
            raise InputError(f"Entry {i} of results file {path!r}: {problem}")
        if isinstance(rec.get("segmentation"), dict):
            rles.append((i, rec["segmentation"]))
    for (i, _), problem in zip(rles, rle_problems([seg for _, seg in rles])):
        if problem:
            raise InputError(f"Entry {i} of results file {path!r}: 'segmentation' is not a valid RLE ({problem})")
    return data


def _size_of(image: Mapping[str, Any]) -> tuple[int, int] | None:
    h, w = image.get("height"), image.get("width")
    return (int(h), int(w)) if h is not None and w is not None else None


def load_coco_ground_truth(
    coco_json: str | os.PathLike | Mapping[str, Any], *, require_annotations: bool = True
) -> dict[str, Any]:
    """Read and check COCO instances ground truth for evaluation, as pycocotools / detectron2 read it.

    Filled in, as detectron2 does (logged): an annotation's ``iscrowd`` (0), ``bbox`` (from its
    mask), ``area`` (its mask's pixels, else the box's w x h); an image's ``height`` / ``width`` from
    its RLE masks. Refused by name: a malformed ``images`` / ``categories`` / ``annotations`` entry,
    an annotation without an integer ``id`` or with one used twice, an ``image_id`` or
    ``category_id`` the file does not list, a ``bbox`` that is not 4 finite numbers with w, h >= 0,
    ``iscrowd`` other than 0 / 1, a mask that does not decode (see :func:`~.rle.rle_problems`) or has
    another size than its image, polygons on an image without ``height`` / ``width``.

    Args:
        coco_json: the annotation file, or its loaded dict.
        require_annotations: refuse a file without ``annotations`` (an image list only).

    Returns:
        A new dict (its images and annotations copied, the caller's left as they are).

    Raises:
        MissingFileError / InputError: the message names the file and the entry.
    """
    source = "the ground truth" if isinstance(coco_json, Mapping) else repr(os.fspath(coco_json))
    data = load_coco_dict(coco_json)

    def fail(problem: str) -> InputError:
        return InputError(f"{source}: {problem}")

    cat_ids = set(load_coco_categories(data)[0])
    if not isinstance(data.get("images"), list):
        raise fail("'images' must be a list of {'id', 'file_name', 'height', 'width'}")
    images: dict[int, dict[str, Any]] = {}
    for k, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise fail(f"image entry {k} has no integer 'id'")
        if image["id"] in images:
            raise fail(f"image id {image['id']} appears more than once")
        image = dict(image)
        for key in ("height", "width"):
            value = image.get(key)
            if value is not None and not (_finite_number(value) and value == int(value) and value > 0):
                raise fail(f"image id {image['id']}: {key!r} must be a positive integer, got {value!r}")
            if value is not None:
                image[key] = int(value)
        if (image.get("height") is None) != (image.get("width") is None):
            raise fail(f"image id {image['id']} gives only one of 'height' / 'width'")
        images[image["id"]] = image
    out = {**data, "images": list(images.values())}
    if "annotations" not in data:
        if require_annotations:
            raise fail("has no 'annotations'; ground truth is needed to evaluate (results can still be written)")
        return out
    if not isinstance(data["annotations"], list):
        raise fail("'annotations' must be a list")

    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    rles: list[tuple[dict[str, Any], dict]] = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise fail(f"annotation {k} has no integer 'id'")
        name = f"annotation id {ann['id']}"
        if ann["id"] in seen:
            raise fail(f"{name} appears more than once")
        seen.add(ann["id"])
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
            raise fail(f"{name} has image_id {ann.get('image_id')!r}, which 'images' does not list")
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
            raise fail(f"{name} has category_id {ann.get('category_id')!r}, which 'categories' does not list")
        ann = dict(ann)
        if "iscrowd" in ann:
            if not (_finite_number(ann["iscrowd"]) or isinstance(ann["iscrowd"], bool)) or ann["iscrowd"] not in (0, 1):
                raise fail(f"{name}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
            ann["iscrowd"] = int(ann["iscrowd"])
        bbox = ann.get("bbox")
        if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)
                                     and bbox[2] >= 0 and bbox[3] >= 0):
            raise fail(f"{name}: 'bbox' must be 4 finite numbers [x, y, w, h] with w, h >= 0, got {bbox!r}")
        if "area" in ann and not (_finite_number(ann["area"]) and ann["area"] >= 0):
            raise fail(f"{name}: 'area' must be a finite number >= 0, got {ann['area']!r}")
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            rles.append((ann, seg))
        elif seg is not None:
            problem = polygon_problem(seg)
            if problem:
                raise fail(f"{name}: 'segmentation' must be {_SEGMENTATION_FORMS}: {problem}")
        elif bbox is None:
            raise fail(f"{name} has neither a 'bbox' nor a 'segmentation'")
        annotations.append(ann)
    sized_from_masks = 0
    for (ann, seg), problem in zip(rles, rle_problems([seg for _, seg in rles])):
        if problem:
            raise fail(f"annotation id {ann['id']}: 'segmentation' is not a valid RLE ({problem})")
        image = images[ann["image_id"]]
        size, expected = rle_size(seg), _size_of(image)
        if expected is None:
            image["height"], image["width"] = size
            sized_from_masks += 1
        elif size != expected:
            raise fail(f"annotation id {ann['id']}: its 'segmentation' is {size[0]}x{size[1]} but image "
                       f"{image['id']} is {expected[0]}x{expected[1]}")

    filled = {"area": 0, "iscrowd": 0, "bbox": 0}
    for ann in annotations:
        seg = ann.get("segmentation")
        missing = [key for key in filled if key not in ann]
        if isinstance(seg, list):  # pycocotools rasterizes polygons with their image's size
            image = images[ann["image_id"]]
            if _size_of(image) is None:
                raise fail(f"image id {image['id']} has no 'height'/'width', which its polygon annotations (annotation "
                           f"id {ann['id']}) need to be rasterized; add the image's size in pixels")
        if isinstance(seg, list) and not seg:  # no polygon: an empty mask (pycocotools fails on [])
            ann["segmentation"] = to_compressed_rle(seg, *_size_of(images[ann["image_id"]]))
        for key in missing:
            filled[key] += 1
        if "iscrowd" in missing:
            ann["iscrowd"] = 0
        if {"area", "bbox"} & set(missing):
            rle = None
            if seg is not None:
                rle = to_compressed_rle(seg, *_size_of(images[ann["image_id"]]))
            if "bbox" in missing:
                ann["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
            if "area" in missing:
                ann["area"] = float(mask_util.area(rle)) if rle is not None else float(ann["bbox"][2] * ann["bbox"][3])
    said = [f"{filled['area']} annotation(s) without 'area' (computed from their masks or boxes, as detectron2)"
            if filled["area"] else "",
            f"{filled['iscrowd']} without 'iscrowd' (0)" if filled["iscrowd"] else "",
            f"{filled['bbox']} without 'bbox' (from their masks)" if filled["bbox"] else "",
            f"{sized_from_masks} mask(s) giving the size of images without 'height'/'width'" if sized_from_masks else ""]
    if any(said):
        logger.warning("%s as other tools write it: %s", source, " and ".join(t for t in said if t))
    return {**out, "annotations": annotations}


def _check_results(results: list[dict[str, Any]], gt: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """``results`` ready for pycocotools against ``gt`` (:func:`load_coco_ground_truth`'s): their
    images and categories known, masks on all detections or none (and ``mask_score`` likewise), each
    mask of its image's size; polygon and uncompressed-RLE masks become compressed RLE (copies)."""
    known_images = {im["id"]: im for im in gt["images"]}
    unknown = sorted({r["image_id"] for r in results} - set(known_images))
    if unknown:
        raise InputError(
            f"Results refer to image ids {unknown[:10]} that are not in {source}; "
            "use the annotation file the results were produced for."
        )
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    unknown = sorted({r["category_id"] for r in results} - cat_ids)
    if unknown:
        raise InputError(
            f"Results refer to category ids {unknown[:10]} that are not in {source} ('categories'); "
            "use the annotation file the results were produced for."
        )
    with_masks = [i for i, r in enumerate(results) if "segmentation" in r]
    keys = ["segmentation"] + (["mask_score"] if with_masks and len(with_masks) == len(results) else [])
    for key in keys:
        lacking = [i for i, r in enumerate(results) if key not in r]
        if lacking and len(lacking) < len(results):
            raise InputError(
                f"{len(lacking)} of {len(results)} detections have no {key!r} (entry {lacking[0]}"
                f"{', ...' if len(lacking) > 1 else ''}) while the others have one: give every detection one, or none"
            )
    converted = 0
    out = list(results)
    for i in with_masks:
        seg = results[i]["segmentation"]
        image = known_images[results[i]["image_id"]]
        size = _size_of(image)
        if isinstance(seg, dict):
            got = rle_size(seg)
            if got is None:
                raise InputError(f"entry {i}: its 'segmentation' has no valid 'size' [height, width], got "
                                 f"{seg.get('size')!r}")
            if size is not None and got != size:
                raise InputError(f"entry {i}: its 'segmentation' is {got[0]}x{got[1]} but image {image['id']} is "
                                 f"{size[0]}x{size[1]} in {source}; the results are for other images")
            if isinstance(seg.get("counts"), str):
                continue
            out[i] = {**results[i], "segmentation": to_compressed_rle(seg, *got)}
        else:
            if size is None:
                raise InputError(f"entry {i}: a polygon 'segmentation' needs the size of image {image['id']}, which "
                                 f"{source} does not give ('height'/'width')")
            out[i] = {**results[i], "segmentation": to_compressed_rle(seg, *size)}
            converted += 1
    if converted:
        logger.warning("results as other tools write them: %d polygon segmentation(s) converted to RLE with their "
                       "images' sizes", converted)
    return out


def _fmt_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return "" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a small markdown ("pipe") table, floats with 3 decimals, like detectron2's tables."""
    cells = [[_fmt_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.center(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join(":" + "-" * (w) + ":" for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def _log_captured(text: str) -> None:
    """Send pycocotools' captured stdout to the log."""
    text = text.rstrip()
    if text:
        logger.info("%s", text)


def _evaluate_task(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str) -> COCOeval:
    """Run pycocotools on ``results`` for ``iou_type`` ("bbox" or "segm"), centermask2 style."""
    results = copy.deepcopy(results)  # loadRes writes area/id/iscrowd into the dicts
    if iou_type == "segm":
        # Without bbox, COCO takes the area from the mask (small/medium/large by mask area);
        # centermask2 ranks masks by mask_score when the results have it (decided by entry 0).
        has_mask_scores = "mask_score" in results[0]
        for rec in results:
            rec.pop("bbox", None)
            if has_mask_scores:
                rec["score"] = rec.pop("mask_score")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    _log_captured(buf.getvalue())
    return coco_eval


def _per_category_ap(coco_eval: COCOeval, class_names: Sequence[str]) -> dict[str, float]:
    """AP (percent) per category over IoU 0.50:0.95, all areas, max dets 100.

    Categories without ground truth (all precisions -1) are left out.
    """
    precisions = coco_eval.eval["precision"]  # [iou, recall, category, area, max dets]
    if precisions.shape[2] != len(class_names):
        raise InputError(
            f"COCOeval has {precisions.shape[2]} categories but {len(class_names)} class names."
        )
    per_category: dict[str, float] = {}
    for idx, name in enumerate(class_names):
        precision = precisions[:, :, idx, 0, -1]
        precision = precision[precision > -1]
        if precision.size:
            per_category[name] = float(np.mean(precision) * 100)
    return per_category


def _log_per_category(iou_type: str, per_category: Mapping[str, float]) -> None:
    """Log per-category AP as a 3-pairs-wide table (detectron2's layout)."""
    items = list(per_category.items())
    if not items:
        return
    n_cols = min(6, len(items) * 2)
    flat = list(itertools.chain(*items))
    rows = list(itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)]))
    logger.info(
        "Per-category %s AP:\n%s", iou_type, format_table(["category", "AP"] * (n_cols // 2), rows)
    )


def evaluate_coco(
    results: Sequence[Mapping[str, Any]],
    coco_json: str | os.PathLike | Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate COCO-format detections (bbox and, if present, segm) with pycocotools.

    Args:
        results: COCO result dicts with dataset category ids (see :func:`instances_to_coco_json`,
            :func:`load_coco_results`).
        coco_json: ground-truth COCO annotation file, or its dict (read and checked by
            :func:`load_coco_ground_truth`).
        output_dir: if given, ``metrics.json`` is written there (atomically); the results file
            is the caller's to write (it usually already has).

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "bbox_per_category": {name: AP},
        "segm": {...}, "segm_per_category": {...}}`` in percent; segm keys only when the
        results have ``segmentation``. Undefined overall metrics are -100.0; with no results at
        all every metric is NaN (detectron2's "No predictions from the model!").
    """
    source = "the ground truth" if isinstance(coco_json, Mapping) else repr(os.fspath(coco_json))
    gt = load_coco_ground_truth(coco_json)
    _, class_names = load_coco_categories(gt)
    results = _check_results([dict(r) for r in results], gt, source)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
    _log_captured(buf.getvalue())

    tasks = ["bbox"] + (["segm"] if any("segmentation" in r for r in results) else [])
    without_masks = sum("segmentation" not in a for a in coco_gt.dataset.get("annotations", []))
    if "segm" in tasks and without_masks:
        logger.warning(
            "%d ground-truth annotation(s) in %s have no 'segmentation' (box-only ground truth): scoring bbox only, "
            "segm skipped", without_masks, source,
        )
        tasks.remove("segm")
    metrics: dict[str, dict[str, float]] = {}
    for task in tasks:
        if not results:
            logger.warning("No predictions from the model! All %s metrics are NaN.", task)
            metrics[task] = {name: float("nan") for name in _METRIC_NAMES}
            metrics[f"{task}_per_category"] = {}
            continue
        coco_eval = _evaluate_task(coco_gt, results, task)
        overall = {name: float(coco_eval.stats[i] * 100) for i, name in enumerate(_METRIC_NAMES)}
        logger.info(
            "Evaluation results for %s:\n%s",
            task,
            format_table(list(overall), [list(overall.values())]),
        )
        if any(v < 0 for v in overall.values()):
            logger.info("Metrics shown as -100 cannot be computed (no ground truth in that range).")
        per_category = _per_category_ap(coco_eval, class_names)
        _log_per_category(task, per_category)
        metrics[task] = overall
        metrics[f"{task}_per_category"] = per_category

    if output_dir is not None:
        out = os.fspath(output_dir)
        os.makedirs(out, exist_ok=True)
        atomic_write_json(metrics, os.path.join(out, "metrics.json"))
        logger.info("Wrote %s", os.path.join(out, "metrics.json"))
    return metrics
