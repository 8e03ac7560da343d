"""Pictures of what the model found: translucent masks, boxes, class names and scores."""

from .draw import draw_instances, filter_records, instance_colors, side_by_side

__all__ = ["draw_instances", "filter_records", "instance_colors", "side_by_side"]
