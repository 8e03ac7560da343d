"""centermask2.evaluation.matching: the one detection matcher."""

import numpy as np

from centermask2.evaluation.matching import box_iou_xyxy, match_boxes, match_records, summarize_match


def _rec(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float)
    np.testing.assert_allclose(box_iou_xyxy(a, b), [[1.0, 1 / 3], [0.0, 0.0]])


def test_greedy_best_score_first_same_class_only():
    ref = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5]], float)
    cand = np.array([[0, 0, 10, 10.2], [0, 0, 10, 10]], float)
    # the better-scoring reference (index 1) chooses first and takes its closest candidate
    assert match_boxes(ref, np.array([1, 1]), np.array([0.5, 0.9]), cand, np.array([1, 1])) == [(1, 0), (0, 1)]
    assert match_boxes(ref, np.array([1, 1]), np.array([0.5, 0.9]), cand, np.array([2, 2])) == []
    assert match_boxes(ref, np.array([1, 1]), np.array([0.5, 0.9]), cand[:0], np.array([])) == []


def test_threshold():
    ref = np.array([[0, 0, 10, 10]], float)
    cand = np.array([[0, 0, 10, 11.2]], float)  # IoU 0.893
    assert match_boxes(ref, [0], [1.0], cand, [0]) == []
    assert match_boxes(ref, [0], [1.0], cand, [0], iou_threshold=0.85) == [(0, 0)]


def test_records_are_matched_per_image():
    left = [_rec(1, 5, [0, 0, 10, 10], 0.9), _rec(2, 5, [0, 0, 10, 10], 0.8)]
    right = [_rec(2, 5, [0, 0, 10, 10], 0.7), _rec(3, 5, [0, 0, 10, 10], 0.7)]
    pairs = match_records(left, right)
    assert [(a["image_id"], b["image_id"]) for a, b in pairs] == [(2, 2)]
    summary = summarize_match(left, right)
    assert (summary.left, summary.right, summary.matched) == (2, 2, 1)
    assert summary.format() == "2 vs 2 detections, 1 matched"
