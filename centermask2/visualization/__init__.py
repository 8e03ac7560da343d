"""Pictures of what the model found: translucent masks, boxes, class names and scores; for panoptic
models also the stuff regions under them."""

from .draw import draw_instances, filter_records, instance_colors, side_by_side
from .panoptic import (
    StuffLabel,
    StuffMatch,
    draw_stuff,
    match_stuff,
    stuff_color,
    stuff_label_point,
    stuff_segments,
)

__all__ = [
    "draw_instances",
    "filter_records",
    "instance_colors",
    "side_by_side",
    "StuffLabel",
    "StuffMatch",
    "draw_stuff",
    "match_stuff",
    "stuff_color",
    "stuff_label_point",
    "stuff_segments",
]
