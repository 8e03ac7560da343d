"""COCO-format results and evaluation (centermask2's COCOEvaluator, without detectron2)."""

from .coco import (
    evaluate_coco,
    format_table,
    instances_to_coco_json,
    load_coco_categories,
    load_coco_results,
)

__all__ = [
    "instances_to_coco_json",
    "load_coco_categories",
    "load_coco_results",
    "evaluate_coco",
    "format_table",
]
