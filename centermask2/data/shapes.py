"""A COCO-format instance segmentation dataset that needs no download: coloured, textured
shapes at varied scales, rotations and overlaps, composited on crops of the bundled photos.

:func:`make_dataset` writes ``OUT/{train,val}/images/<id>.png`` and
``OUT/{train,val}/annotations.json`` (polygon segmentations; an occluded shape's polygons trace
what is still visible of it). Image ``k`` of a split is a function of ``(seed, split, k)`` only, so
the same arguments always give the same files, and an interrupted run continues where it stopped
(existing images are kept; the annotation file is written last, atomically). The sample model
(``tools/sample_model``) was trained on it; ``tools/make_shapes_dataset.py`` is its command line.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingFileError

__all__ = ["CLASSES", "PHOTOS", "SPLITS", "load_photos", "render", "make_split", "make_dataset"]

#: category names, ids 1..5
CLASSES = ("circle", "triangle", "square", "star", "cross")
#: the bundled photos the backgrounds are cut from (in a source checkout: ``tools/sample/images``)
PHOTOS = Path(__file__).resolve().parents[2] / "tools" / "sample" / "images"
#: split name -> the generator's stream for it
SPLITS = {"train": 0, "val": 1}

logger = logging.getLogger(__name__)


def _outline(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-size outline of a shape, centred at 0: float64 [K, 2]."""
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        aspect = rng.uniform(0.75, 1.0)
        return np.stack([np.cos(t), aspect * np.sin(t)], 1)
    if kind == "triangle":
        t = np.array([90, 210, 330]) * math.pi / 180 + rng.uniform(-0.25, 0.25, 3)
        return np.stack([np.cos(t), -np.sin(t)], 1)
    if kind == "square":
        aspect = rng.uniform(0.6, 1.0)
        return np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], dtype=np.float64)
    if kind == "star":
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    w = rng.uniform(0.28, 0.4)  # cross: a plus sign of arm half-width w
    return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                     [-1, -w], [-w, -w]], dtype=np.float64)


def _colour(rng: np.random.Generator) -> np.ndarray:
    import cv2

    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(120, 255), rng.uniform(90, 255)]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A fill for one shape: solid, stripes of two colours, or a colour with noise. float32 [h, w, 3]."""
    a = _colour(rng)
    kind = rng.choice(3, p=[0.5, 0.25, 0.25])
    if kind == 0:
        return np.broadcast_to(a, (h, w, 3)).astype(np.float32)
    if kind == 1:
        b = _colour(rng)
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 16)
        yy, xx = np.mgrid[0:h, 0:w]
        stripe = (np.floor((xx * math.cos(angle) + yy * math.sin(angle)) / period) % 2)[..., None]
        return np.where(stripe > 0, a, b).astype(np.float32)
    noise = rng.normal(0, 28, (h, w, 1)).astype(np.float32)
    return np.clip(a + noise, 0, 255)


def _background(photos: list[np.ndarray], h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    if rng.random() < 0.15:
        base = np.broadcast_to(_colour(rng) * rng.uniform(0.3, 1.0), (h, w, 3))
        return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.float32)
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch, cw = max(16, int(ph * scale)), max(16, int(pw * scale))
    ch, cw = min(ch, ph), min(cw, pw)
    y0, x0 = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    crop = cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop * rng.uniform(0.6, 1.3) + rng.uniform(-25, 25), 0, 255)


def render(photos: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One image (uint8 [H, W, 3] BGR) and its instances: ``category_id``, ``segmentation``
    (polygons), ``bbox`` (xywh) and ``area`` (visible pixels)."""
    import cv2

    h, w = int(rng.integers(224, 321)), int(rng.integers(224, 321))
    image = _background(photos, h, w, rng)
    placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (class index, mask, polygon)
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            kind = int(rng.integers(len(CLASSES)))
            size = rng.uniform(14, 0.3 * min(h, w))
            angle = rng.uniform(0, 2 * math.pi)
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            centre = np.array([rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)])
            poly = _outline(CLASSES[kind], rng) @ rot.T * size + centre
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
            area = int(mask.sum())
            if area < 150:
                continue
            if all((mask & m).sum() < 0.35 * min(area, int(m.sum())) for _, m, _ in placed):
                break
        else:
            continue
        fill = _texture(h, w, rng)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)[..., None]
        image = image * (1 - soft) + fill * soft
        placed.append((kind, mask, poly))
    instances = []
    covered = np.zeros((h, w), np.uint8)
    for kind, mask, poly in reversed(placed):  # later shapes lie on top
        visible = mask & (1 - covered)
        covered |= mask
        area = int(visible.sum())
        if area < 0.3 * int(mask.sum()) or area < 100:
            continue
        if area == int(mask.sum()):
            polygons = [np.clip(poly, 0, [w, h]).reshape(-1).round(2).tolist()]
        else:
            contours, _ = cv2.findContours(visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            polygons = [(c.reshape(-1, 2) + 0.5).reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if not polygons:
            continue
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        instances.append({"category_id": kind + 1, "segmentation": polygons, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "area": float(area), "iscrowd": 0})
    return np.clip(image, 0, 255).round().astype(np.uint8), instances[::-1]


def load_photos(folder: str | os.PathLike | None = None) -> list[np.ndarray]:
    """The background photos (BGR uint8), every ``*.png`` of ``folder`` (default :data:`PHOTOS`).

    Raises:
        MissingFileError: no readable photo there.
    """
    import cv2

    folder = Path(folder) if folder is not None else PHOTOS
    photos = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(folder.glob("*.png"))]
    if not photos or any(p is None for p in photos):
        raise MissingFileError(f"cannot read the background photos (*.png) in {folder}")
    return photos


def make_split(
    out: str | os.PathLike,
    split: str,
    count: int,
    seed: int = 0,
    progress: bool = True,
    photos: str | os.PathLike | None = None,
) -> Path:
    """Write ``count`` images of ``split`` (``"train"`` or ``"val"``) under ``out/split/images`` and
    their annotation file ``out/split/annotations.json`` (written last, atomically); returns the
    file. Images already there are kept (a run continues where an interrupted one stopped).
    ``photos``: the folder of background photos (default :data:`PHOTOS`)."""
    import cv2
    from tqdm import tqdm

    from ..fileio import atomic_write_json

    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    backgrounds = load_photos(photos)
    out = Path(out)
    images_dir = out / split / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in tqdm(range(count), desc=split, unit="img", disable=not progress):
        rng = np.random.default_rng([seed, SPLITS[split], k])
        image, instances = render(backgrounds, rng)
        name = f"{k + 1:06d}.png"
        path = images_dir / name
        if not path.is_file():
            tmp = images_dir / f".{name}.tmp.png"
            cv2.imwrite(str(tmp), image)
            tmp.replace(path)
        images.append({"id": k + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for inst in instances:
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, **inst})
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    ann_file = out / split / "annotations.json"
    atomic_write_json({"images": images, "annotations": annotations, "categories": categories}, ann_file)
    logger.info("%s: %d images, %d instances -> %s", split, count, len(annotations), ann_file)
    return ann_file


def make_dataset(
    out: str | os.PathLike,
    train: int = 2000,
    val: int = 120,
    seed: int = 0,
    progress: bool = True,
    photos: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Both splits (those with a count above 0); returns split -> annotation file."""
    return {split: make_split(out, split, count, seed, progress=progress, photos=photos)
            for split, count in (("train", train), ("val", val)) if count > 0}
