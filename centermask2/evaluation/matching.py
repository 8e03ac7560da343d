"""Detection-by-detection matching of two sets of detections of the same image.

One rule for every comparison in the toolkit (the visualizer's side-by-side counts, export
verification, the parity tests): greedy one-to-one matching, reference detections in
decreasing score order, each taking the unused candidate of the same class with the highest box
IoU if that IoU reaches the threshold (0.9 by default). This is also the rule of the reference
comparison tool the golden upstream outputs are checked with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_IOU", "box_iou_xyxy", "match_boxes", "match_records", "MatchSummary", "summarize_match"]

#: box IoU two detections of the same class need to count as the same detection
DEFAULT_IOU = 0.9


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes, in float64.

    Args:
        a: array[N, 4] (x0, y0, x1, y1).
        b: array[M, 4] (x0, y0, x1, y1).

    Returns:
        array[N, M] float64; a union below 1e-9 counts as 1e-9 (degenerate boxes get IoU 0).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_boxes(
    ref_boxes: np.ndarray,
    ref_classes: np.ndarray,
    ref_scores: np.ndarray,
    cand_boxes: np.ndarray,
    cand_classes: np.ndarray,
    iou_threshold: float = DEFAULT_IOU,
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of one image's detections.

    Args:
        ref_boxes: array[N, 4] xyxy of the reference detections.
        ref_classes: array[N] their classes (any comparable ids).
        ref_scores: array[N] their scores; higher scores choose first (ties keep input order).
        cand_boxes: array[M, 4] xyxy of the candidate detections.
        cand_classes: array[M] their classes.
        iou_threshold: least box IoU of a match.

    Returns:
        ``(reference index, candidate index)`` pairs, in the order they were made.
    """
    n, m = len(ref_classes), len(cand_classes)
    if n == 0 or m == 0:
        return []
    iou = box_iou_xyxy(ref_boxes, cand_boxes)
    same = np.asarray(ref_classes).reshape(-1, 1) == np.asarray(cand_classes).reshape(1, -1)
    iou = np.where(same, iou, -1.0)
    used = np.zeros(m, dtype=bool)
    pairs: list[tuple[int, int]] = []
    for i in sorted(range(n), key=lambda k: -float(ref_scores[k])):
        row = np.where(used, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_threshold:
            used[j] = True
            pairs.append((i, j))
    return pairs


def _xywh_to_xyxy(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    boxes = np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def match_records(
    reference: Sequence[Mapping[str, Any]],
    candidate: Sequence[Mapping[str, Any]],
    iou_threshold: float = DEFAULT_IOU,
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """Match COCO result records (``image_id``, ``category_id``, XYWH ``bbox``, ``score``) image by image.

    Returns:
        matched ``(reference record, candidate record)`` pairs (see :func:`match_boxes`).
    """
    by_ref: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    by_cand: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for r in reference:
        by_ref[r.get("image_id")].append(r)
    for r in candidate:
        by_cand[r.get("image_id")].append(r)
    pairs = []
    for image_id, refs in by_ref.items():
        cands = by_cand.get(image_id, [])
        matched = match_boxes(
            _xywh_to_xyxy(refs),
            np.array([r["category_id"] for r in refs]),
            np.array([float(r["score"]) for r in refs]),
            _xywh_to_xyxy(cands),
            np.array([r["category_id"] for r in cands]),
            iou_threshold,
        )
        pairs += [(refs[i], cands[j]) for i, j in matched]
    return pairs


@dataclass
class MatchSummary:
    """How many detections of two sources coincide."""

    left: int
    right: int
    matched: int

    def format(self) -> str:
        return f"{self.left} vs {self.right} detections, {self.matched} matched"


def summarize_match(
    left: Sequence[Mapping[str, Any]], right: Sequence[Mapping[str, Any]], iou_threshold: float = DEFAULT_IOU
) -> MatchSummary:
    """Counts of :func:`match_records` (``left`` is the reference)."""
    return MatchSummary(len(left), len(right), len(match_records(left, right, iou_threshold)))
