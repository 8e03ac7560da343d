"""Draw instance segmentation results: translucent masks, boxes, class names and scores.

Works on COCO result records (``bbox`` XYWH, ``category_id``, ``score``, optional
``mask_score`` and RLE ``segmentation``), so results files, the PyTorch model and ONNX models
are drawn the same way.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util

__all__ = [
    "instance_colors",
    "draw_instances",
    "side_by_side",
    "filter_records",
]

logger = logging.getLogger(__name__)


def instance_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, stable BGR colours: golden-ratio hue steps at high saturation.

    Colour ``i`` depends only on ``i``, so the k-th best detection of an image always gets the
    same colour and neighbours in rank get very different hues.
    """
    colors = []
    for i in range(n):
        hue = (0.12 + i * 0.618033988749895) % 1.0
        sat = 0.85 if i % 2 == 0 else 0.65
        val = 0.95 if (i // 2) % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((int(b * 255), int(g * 255), int(r * 255)))
    return colors


def filter_records(records: Sequence[Mapping[str, Any]], threshold: float, score_key: str = "score") -> list[dict]:
    """Records with ``record[score_key] >= threshold``, best first."""
    kept = [dict(r) for r in records if float(r.get(score_key, r["score"])) >= threshold]
    return sorted(kept, key=lambda r: -float(r.get(score_key, r["score"])))


def _text_size(scale: float, thickness: int, text: str) -> tuple[int, int, int]:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return w, h, base


def _mask(segmentation: Any, h: int, w: int) -> np.ndarray | None:
    """A record's mask as uint8 [h, w] (RLE, uncompressed RLE or polygons, as results files hold them
    and :func:`~centermask2.evaluation.load_coco_results` checks them), or None: no mask, or one of
    another size (skipped with a warning, before decoding it)."""
    from ..evaluation.rle import rle_size, to_compressed_rle

    if not segmentation:
        return None
    if isinstance(segmentation, dict):
        size = rle_size(segmentation)
        if size != (h, w):
            logger.warning("mask of size %s does not fit image %dx%d; skipped", segmentation.get("size"), h, w)
            return None
    return mask_util.decode(to_compressed_rle(segmentation, h, w))


def draw_instances(
    image: np.ndarray,
    records: Sequence[Mapping[str, Any]],
    class_names: Mapping[int, str],
    *,
    score_key: str = "score",
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw detections on a copy of ``image``.

    Args:
        image: np.ndarray[H, W, 3] uint8 BGR (grayscale [H, W] or [H, W, 1] is converted).
        records: COCO result records for this image, drawn in the given order (first = colour 0).
        class_names: dataset category id -> name.
        score_key: ``"score"`` (box) or ``"mask_score"`` shown in the label.
        alpha: mask opacity.

    Returns:
        np.ndarray[H, W, 3] uint8 BGR.
    """
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    canvas = image.astype(np.float32)
    h, w = image.shape[:2]
    colors = instance_colors(len(records))
    # masks first (all of them), then outlines, boxes and labels on top so labels stay readable
    masks = [_mask(rec.get("segmentation"), h, w) for rec in records]
    for m, color in zip(masks, colors):
        if m is None:
            continue
        m = m.astype(bool)
        canvas[m] = canvas[m] * (1.0 - alpha) + np.array(color, np.float32) * alpha
    out = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    scale = max(0.35, min(h, w) / 900.0)
    thickness = max(1, int(round(min(h, w) / 500.0)))
    for rec, m, color in zip(records, masks, colors):
        if m is not None:
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, thickness, cv2.LINE_AA)
        x, y, bw, bh = (float(v) for v in rec["bbox"])
        p1, p2 = (int(round(x)), int(round(y))), (int(round(x + bw)), int(round(y + bh)))
        cv2.rectangle(out, p1, p2, color, thickness, cv2.LINE_AA)
    for rec, color in zip(records, colors):
        name = class_names.get(int(rec["category_id"]), str(rec["category_id"]))
        score = float(rec.get(score_key, rec["score"]))
        text = f"{name} {score:.2f}"
        tw, th, base = _text_size(scale, thickness, text)
        x, y = int(round(float(rec["bbox"][0]))), int(round(float(rec["bbox"][1])))
        x = min(max(x, 0), max(w - tw - 2, 0))
        top = y - th - base - 2
        if top < 0:  # no room above the box: put the label inside it
            top = min(max(y, 0), max(h - th - base - 2, 0))
        cv2.rectangle(out, (x, top), (x + tw + 2, top + th + base + 2), color, -1)
        # dark or light text, whichever contrasts with the label colour
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thickness, cv2.LINE_AA)
    return out


def _titled(image: np.ndarray, title: str, bar_height: int | None = None) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max(0.5, min(h, w) / 700.0)
    thickness = max(1, int(round(scale * 1.5)))
    tw, th, base = _text_size(scale, thickness, title)
    bar = np.full((max(th + base + 12, bar_height or 0), w, 3), 255, np.uint8)
    cv2.putText(bar, title, (6, th + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.vstack([bar, image])


def side_by_side(left: np.ndarray, right: np.ndarray, left_title: str, right_title: str) -> np.ndarray:
    """Two drawings of the same image next to each other, each with a title bar (both bars as
    high as the taller one: a title's height depends on its letters' descenders)."""
    a, b = _titled(left, left_title), _titled(right, right_title)
    if a.shape[0] != b.shape[0]:
        bar = max(a.shape[0] - left.shape[0], b.shape[0] - right.shape[0])
        a, b = _titled(left, left_title, bar), _titled(right, right_title, bar)
    gap = np.full((a.shape[0], 8, 3), 255, np.uint8)
    return np.hstack([a, gap, b])
