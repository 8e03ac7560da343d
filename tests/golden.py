"""Helpers for the golden upstream cases in tests/data/golden_<case>/.

The checkpoints are stored as recipes (see :mod:`centermask2.sample`).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

from centermask2.sample import recipe_arrays as _recipe_arrays
from centermask2.sample import write_checkpoint as _write_checkpoint

DATA = Path(__file__).parent / "data"
CASES = {"V_39": DATA / "golden_V_39", "lite_V_19_slim_dw": DATA / "golden_lite_V_19_slim_dw"}
CONFIGS = Path(__file__).parent.parent / "configs" / "centermask"


def case_info(case: str) -> dict:
    return json.loads((CASES[case] / "case.json").read_text())


def recipe_arrays(case: str) -> dict[str, np.ndarray]:
    return _recipe_arrays(CASES[case])


def write_checkpoint(case: str, path: Path, fmt: str = "pth") -> Path:
    """Write the case's weights as a detectron2 .pth or a model-zoo style .pkl."""
    return _write_checkpoint(CASES[case], path, fmt)


def _box_iou_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax2, ay2 = a[0] + a[2], a[1] + a[3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    return inter / np.maximum(a[2] * a[3] + b[:, 2] * b[:, 3] - inter, 1e-9)


def compare_results(expected: list[dict], actual: list[dict], iou_thr: float = 0.9) -> dict:
    """Greedy detection-by-detection match (same category, box IoU >= iou_thr), expected
    detections in decreasing score order; statistics over matched pairs."""
    by_e, by_a = collections.defaultdict(list), collections.defaultdict(list)
    for r in expected:
        by_e[r["image_id"]].append(r)
    for r in actual:
        by_a[r["image_id"]].append(r)
    pairs = []
    for img in set(by_e) | set(by_a):
        act = by_a[img]
        used = np.zeros(len(act), bool)
        boxes = np.array([r["bbox"] for r in act], float).reshape(-1, 4)
        cats = np.array([r["category_id"] for r in act])
        for e in sorted(by_e[img], key=lambda r: -r["score"]):
            if not act:
                break
            iou = _box_iou_one(np.array(e["bbox"], float), boxes)
            iou[(cats != e["category_id"]) | used] = -1
            j = int(np.argmax(iou))
            if iou[j] >= iou_thr:
                used[j] = True
                pairs.append((e, act[j]))
    out = {"expected": len(expected), "actual": len(actual), "matched": len(pairs),
           "recall": len(pairs) / max(len(expected), 1), "precision": len(pairs) / max(len(actual), 1)}
    if pairs:
        box = [np.abs(np.array(e["bbox"]) - np.array(a["bbox"])).max() for e, a in pairs]
        mious = []
        for e, a in pairs:
            if mask_util.area(e["segmentation"]) == 0 and mask_util.area(a["segmentation"]) == 0:
                mious.append(1.0)
            else:
                mious.append(float(mask_util.iou([a["segmentation"]], [e["segmentation"]], [0])[0][0]))
        out.update(
            box_diff_p99=float(np.percentile(box, 99)),
            box_diff_max=float(np.max(box)),
            score_diff_max=float(max(abs(e["score"] - a["score"]) for e, a in pairs)),
            mask_score_diff_max=float(max(abs(e["mask_score"] - a["mask_score"]) for e, a in pairs)),
            mask_iou_p5=float(np.percentile(mious, 5)),
            mask_iou_min=float(np.min(mious)),
        )
    return out


def assert_results_match(expected: list[dict], actual: list[dict]) -> dict:
    """The acceptance thresholds of the reference comparison tool (its defaults)."""
    r = compare_results(expected, actual)
    assert r["matched"] > 0, r
    assert r["recall"] >= 0.95 and r["precision"] >= 0.95, r
    assert r["box_diff_p99"] <= 1.0, r
    assert r["score_diff_max"] <= 2e-3, r
    assert r["mask_iou_p5"] >= 0.9, r
    return r
