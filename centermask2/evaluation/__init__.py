"""COCO-format results and evaluation (centermask2's COCOEvaluator, without detectron2), the
detection-by-detection matcher every comparison uses (:mod:`.matching`), panoptic results and
panoptic quality (:mod:`.panoptic`), semantic segmentation metrics (:mod:`.sem_seg`), and the
ground truth a run is scored against, found once for every script (:mod:`.ground_truth`)."""

from .coco import (
    evaluate_coco,
    format_table,
    instances_to_coco_json,
    load_coco_categories,
    load_coco_ground_truth,
    load_coco_results,
)
from .matching import MatchSummary, match_boxes, match_records, summarize_match
from .panoptic import (
    PanopticResultsWriter,
    compute_pq,
    evaluate_panoptic,
    read_panoptic_gt,
    read_panoptic_results,
)
from .sem_seg import SemSegEvaluator, evaluate_sem_seg

__all__ = [
    "match_boxes",
    "match_records",
    "summarize_match",
    "MatchSummary",
    "instances_to_coco_json",
    "load_coco_categories",
    "load_coco_ground_truth",
    "load_coco_results",
    "evaluate_coco",
    "format_table",
    "PanopticResultsWriter",
    "read_panoptic_gt",
    "read_panoptic_results",
    "compute_pq",
    "evaluate_panoptic",
    "SemSegEvaluator",
    "evaluate_sem_seg",
]
