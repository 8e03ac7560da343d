"""Stuff regions of a panoptic prediction: translucent fills per category and their names, drawn
under the instances; and how well two predictions' stuff agrees.

A panoptic prediction is a segment-id map (int [H, W], 0 = void, see
:func:`~centermask2.evaluation.panoptic.read_panoptic_png`) and its segments
(segment id, dataset category id). Thing segments are left to
:func:`~centermask2.visualization.draw_instances`, which draws the detections on top; void pixels
keep the image's colours.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "StuffLabel",
    "StuffMatch",
    "stuff_color",
    "stuff_display_name",
    "stuff_label_point",
    "stuff_segments",
    "draw_stuff",
    "match_stuff",
]

#: opacity of stuff fills (instances, drawn on top, use 0.45)
STUFF_ALPHA = 0.4
#: stuff regions smaller than this many pixels are filled but not named
MIN_LABEL_AREA = 64


def stuff_color(category_id: int) -> tuple[int, int, int]:
    """A stable BGR colour for a stuff category: muted (medium saturation) so that the saturated
    instance colours stand out on it; neighbouring category ids get very different hues."""
    hue = (0.05 + int(category_id) * 0.381966011250105) % 1.0
    sat = 0.5 if int(category_id) % 2 == 0 else 0.38
    val = 0.88 if (int(category_id) // 2) % 2 == 0 else 0.72
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(b * 255), int(g * 255), int(r * 255)


def stuff_display_name(name: str) -> str:
    """COCO panoptic names without their ``-merged`` / ``-other`` / ``-stuff`` tails
    (``sky-other-merged`` -> ``sky``, ``door-stuff`` -> ``door``), as detectron2's visualizer shows them."""
    short = re.sub(r"-(merged|other|stuff)\b", "", name)
    return short or name


def stuff_segments(
    segments: Iterable[tuple[int, int]], categories: Mapping[int, tuple[str, bool]]
) -> list[tuple[int, int]]:
    """The ``(segment id, category id)`` pairs of ``segments`` whose category is not a thing
    (``categories``: dataset id -> (name, isthing); unknown categories count as stuff)."""
    return [(int(sid), int(cid)) for sid, cid in segments if not categories.get(int(cid), ("", False))[1]]


def stuff_label_point(mask: np.ndarray) -> tuple[int, int] | None:
    """Where a region's name goes: the pixel of ``mask`` farthest from the region's border (and
    from the image border), i.e. the centre of its largest inscribed disc. ``(x, y)``, or None
    for an empty mask. Ties go to the first pixel in row-major order (deterministic)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    padded = np.pad(m, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


@dataclass(frozen=True)
class StuffLabel:
    """A stuff region's name as drawn: its text, the anchor point and the text box
    ``(x0, y0, x1, y1)``, inclusive-exclusive, clipped to the image."""

    category_id: int
    text: str
    point: tuple[int, int]
    box: tuple[int, int, int, int]


def _text_box(text: str, point: tuple[int, int], h: int, w: int, scale: float, thickness: int):
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = thickness + 2
    x0 = min(max(point[0] - tw // 2, pad), max(w - tw - pad, 0))
    y_base = min(max(point[1] + th // 2, th + pad), max(h - base - pad, th))
    box = (max(x0 - pad, 0), max(y_base - th - pad, 0), min(x0 + tw + pad, w), min(y_base + base + pad, h))
    return (x0, y_base), box


def draw_stuff(
    image: np.ndarray,
    segment_ids: np.ndarray,
    segments: Sequence[tuple[int, int]],
    names: Mapping[int, str],
    *,
    alpha: float = STUFF_ALPHA,
    labels: bool = True,
) -> tuple[np.ndarray, list[StuffLabel]]:
    """Fill stuff regions with their category's colour and write their names, on a copy of ``image``.

    Args:
        image: np.ndarray[H, W, 3] uint8 BGR (grayscale [H, W] or [H, W, 1] is converted).
        segment_ids: int [H, W] segment id of every pixel (0 = void).
        segments: ``(segment id, dataset category id)`` of the stuff segments to draw (see
            :func:`stuff_segments`); other ids in the map (things, void) are left as they are.
        names: dataset category id -> name (shortened by :func:`stuff_display_name`).
        alpha: fill opacity.
        labels: write each region's name at :func:`stuff_label_point` (regions of at least
            :data:`MIN_LABEL_AREA` pixels).

    Returns:
        (np.ndarray[H, W, 3] uint8 BGR, the labels written). Pixels outside the drawn stuff
        regions and their label boxes are the input's.
    """
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    ids = np.asarray(segment_ids)
    if ids.shape != (h, w):
        raise ValueError(f"segment-id map of shape {list(ids.shape)} does not fit image {w}x{h} (width x height)")
    if not segments:
        return image.copy(), []
    lookup = {sid: cid for sid, cid in segments}
    # one pass over the pixels: each pixel's colour index (0 = not drawn)
    wanted = np.array(sorted(lookup), dtype=np.int64)
    flat = ids.reshape(-1).astype(np.int64)
    pos = np.searchsorted(wanted, flat)
    pos = np.minimum(pos, len(wanted) - 1)
    hit = wanted[pos] == flat
    palette = np.array([stuff_color(lookup[int(s)]) for s in wanted], dtype=np.float32)
    canvas = image.astype(np.float32).reshape(-1, 3)
    canvas[hit] = canvas[hit] * (1.0 - alpha) + palette[pos[hit]] * alpha
    out = np.clip(canvas + 0.5, 0, 255).astype(np.uint8).reshape(h, w, 3)
    if not labels:
        return out, []
    region = np.where(hit, pos, -1).reshape(h, w)
    scale = max(0.4, min(h, w) / 1000.0)
    thickness = max(1, int(round(min(h, w) / 600.0)))
    written: list[StuffLabel] = []
    for k, sid in enumerate(wanted):
        mask = region == k
        if int(mask.sum()) < MIN_LABEL_AREA:
            continue
        point = stuff_label_point(mask)
        cid = lookup[int(sid)]
        text = stuff_display_name(names.get(cid, str(cid)))
        org, box = _text_box(text, point, h, w, scale, thickness)
        # white text on a darkened box: readable on any fill, the region still shows through
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = (out[y0:y1, x0:x1].astype(np.float32) * 0.4 + 0.5).astype(np.uint8)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        written.append(StuffLabel(cid, text, point, box))
    return out, written


@dataclass(frozen=True)
class StuffMatch:
    """Stuff segments of two predictions of the same image and how many agree."""

    left: int
    right: int
    matched: int

    def format(self) -> str:
        return f"{self.left} vs {self.right} stuff segments, {self.matched} matched"


def match_stuff(
    left_ids: np.ndarray,
    left_segments: Sequence[tuple[int, int]],
    right_ids: np.ndarray,
    right_segments: Sequence[tuple[int, int]],
) -> StuffMatch:
    """Count stuff segments of two predictions that agree: same category and IoU > 0.5 (panoptic
    quality's rule; segments of one map do not overlap, so such a match is unique). Segments listed
    but covering no pixel count as segments that match nothing.

    Args:
        left_ids, right_ids: int [H, W] segment-id maps of the same image.
        left_segments, right_segments: their stuff segments, ``(segment id, category id)``.
    """
    a = np.asarray(left_ids, dtype=np.int64).reshape(-1)
    b = np.asarray(right_ids, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"segment-id maps of different sizes: {list(np.shape(left_ids))} vs {list(np.shape(right_ids))}")
    left, right = dict(left_segments), dict(right_segments)
    if not left or not right:
        return StuffMatch(len(left), len(right), 0)
    area_a = dict(zip(*np.unique(a, return_counts=True)))
    area_b = dict(zip(*np.unique(b, return_counts=True)))
    pairs, inter = np.unique(a * (1 << 24) + b, return_counts=True)
    matched = 0
    for code, n in zip(pairs.tolist(), inter.tolist()):
        sa, sb = code >> 24, code & ((1 << 24) - 1)
        if sa not in left or sb not in right or left[sa] != right[sb]:
            continue
        union = int(area_a[sa]) + int(area_b[sb]) - n
        if n / union > 0.5:
            matched += 1
    return StuffMatch(len(left), len(right), matched)
