"""COCO-format results and bbox/segm evaluation, as centermask2's ``COCOEvaluator``.

centermask2 (``centermask/evaluation/coco_evaluation.py``) differs from detectron2's evaluator
in one point: when results carry ``mask_score``, the segm evaluation ranks detections by it
(``score`` is replaced by ``mask_score``) and drops ``bbox`` so that COCO uses the mask area.

Metric conventions follow the golden reference files: overall metrics are pycocotools'
``stats * 100`` (so an undefined metric, e.g. APl with no large ground truth, is ``-100.0``
where detectron2 would log NaN) and per-category AP lists only categories that have ground
truth (detectron2 reports NaN for the others).
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

from ..data.categories import load_coco_categories
from ..errors import InputError
from ..fileio import atomic_write_json, read_json

__all__ = [
    "instances_to_coco_json",
    "load_coco_categories",
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


def _malformed(rec: Mapping[str, Any]) -> str:
    """What is wrong with one result record's values, or ``""``."""
    bbox = rec["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)):
        return f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    for key in ("image_id", "category_id"):
        if not isinstance(rec[key], int) or isinstance(rec[key], bool):
            return f"'{key}' must be an integer, got {rec[key]!r}"
    for key in ("score", "mask_score"):
        if key in rec and not _finite_number(rec[key]):
            return f"'{key}' must be a finite number, got {rec[key]!r}"
    return ""


def load_coco_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load and validate a COCO results file (``coco_instances_results.json``).

    Raises:
        MissingFileError: ``path`` does not exist.
        InputError: not JSON, or not a list of result dicts with image_id/category_id/bbox/score.
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
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or any(k not in rec for k in _RESULT_KEYS):
            raise InputError(
                f"Entry {i} of results file {path!r} is not a COCO detection; every entry needs "
                f"the keys {list(_RESULT_KEYS)}."
            )
        problem = _malformed(rec)
        if problem:
            raise InputError(f"Entry {i} of results file {path!r}: {problem}")
    return data


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
    coco_json: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate COCO-format detections (bbox and, if present, segm) with pycocotools.

    Args:
        results: COCO result dicts with dataset category ids (see :func:`instances_to_coco_json`).
        coco_json: ground-truth COCO annotation file.
        output_dir: if given, ``metrics.json`` is written there (atomically); the results file
            is the caller's to write (it usually already has).

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "bbox_per_category": {name: AP},
        "segm": {...}, "segm_per_category": {...}}`` in percent; segm keys only when the
        results have ``segmentation``. Undefined overall metrics are -100.0; with no results at
        all every metric is NaN (detectron2's "No predictions from the model!").
    """
    coco_path = os.fspath(coco_json)
    _, class_names = load_coco_categories(coco_path)
    results = [dict(r) for r in results]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO(coco_path)
    _log_captured(buf.getvalue())
    if "annotations" not in coco_gt.dataset:
        raise InputError(
            f"{coco_path!r} has no 'annotations'; ground truth is needed to evaluate "
            "(results can still be written with instances_to_coco_json)."
        )

    known_images = set(coco_gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - known_images)
    if unknown:
        raise InputError(
            f"Results refer to image ids {unknown[:10]} that are not in {coco_path!r}; "
            "use the annotation file the results were produced for."
        )

    tasks = ["bbox"] + (["segm"] if any("segmentation" in r for r in results) else [])
    without_masks = sum("segmentation" not in a for a in coco_gt.dataset.get("annotations", []))
    if "segm" in tasks and without_masks:
        logger.warning(
            "%d ground-truth annotation(s) in %r have no 'segmentation' (box-only ground truth): scoring bbox only, "
            "segm skipped", without_masks, coco_path,
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
