"""COCO-format results and evaluation (centermask2's COCOEvaluator, without detectron2), and the
detection-by-detection matcher every comparison uses (:mod:`.matching`)."""

from .coco import (
    evaluate_coco,
    format_table,
    instances_to_coco_json,
    load_coco_categories,
    load_coco_results,
)
from .matching import MatchSummary, match_boxes, match_records, summarize_match

__all__ = [
    "match_boxes",
    "match_records",
    "summarize_match",
    "MatchSummary",
    "instances_to_coco_json",
    "load_coco_categories",
    "load_coco_results",
    "evaluate_coco",
    "format_table",
]
