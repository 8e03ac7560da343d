"""Training data: COCO instance annotations to the model's training batches.

What detectron2's ``load_coco_json`` + training ``DatasetMapper`` do for CenterMask, in plain
Python, and deterministic: the batch of iteration ``i`` depends only on ``(seed, i)``, so a run
resumed from a checkpoint sees the same images, scales and flips as an uninterrupted one, with
any number of loader workers.

* Crowd annotations are dropped (upstream's mapper does), as are polygons with fewer than three
  points; an annotation left with no polygon is dropped with a warning naming how many.
* RLE masks become polygons: the outline of each 8-connected piece, holes filled, traced at a
  quarter-pixel (the training goldens trace along pixel edges; the difference is under 1/8 px).
* Images without annotations are skipped (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``).
* Per image: shortest-edge resize to a size drawn from ``INPUT.MIN_SIZE_TRAIN`` (``choice`` or
  ``range``), long side capped at ``MAX_SIZE_TRAIN``, PIL bilinear; horizontal (or vertical)
  flip with probability 1/2 (``INPUT.RANDOM_FLIP``); boxes scaled, flipped and clipped to the
  image, and instances whose box becomes empty removed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util

from ..errors import InputError
from ..evaluation.rle import rle_problems, rle_size
from ..fileio import path_inside
from .categories import load_coco_categories, load_coco_dict
from .transforms import get_resize_shape, read_image, resize_image

__all__ = [
    "TrainInstance",
    "TrainImage",
    "load_training_annotations",
    "rle_to_polygons",
    "AugmentSettings",
    "map_training_image",
    "TrainingBatches",
    "collate_training_batch",
    "CollatedBatches",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainInstance:
    """One annotated object, in original-image pixels."""

    box: tuple[float, float, float, float]  # xyxy
    category: int  # contiguous class
    polygons: list[np.ndarray]  # flat float64 [x0, y0, x1, y1, ...]


@dataclass
class TrainImage:
    """One training image and its objects."""

    image_id: int
    path: Path
    height: int
    width: int
    instances: list[TrainInstance]


def rle_to_polygons(segmentation: dict[str, Any], height: int, width: int) -> list[np.ndarray]:
    """Polygons of an RLE (or uncompressed RLE) mask: one outline per 8-connected piece,
    holes filled, traced on a 4x upsampled mask (within 1/8 pixel of the pixel edges).

    Returns:
        flat float64 arrays ``[x0, y0, ...]`` with at least 3 points each.
    """
    rle = segmentation
    if isinstance(rle.get("counts"), list):
        rle = mask_util.frPyObjects(rle, height, width)
    mask = mask_util.decode(rle)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if not mask.any():
        return []
    up = 4
    big = cv2.resize(mask.astype(np.uint8), (mask.shape[1] * up, mask.shape[0] * up), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64)
        if len(pts) < 3:
            continue
        # centre of an upsampled boundary pixel -> image coordinates
        polygons.append(((pts + 0.5) / up).reshape(-1))
    return polygons


def _integer(value: Any) -> int:
    """A COCO id or size: an integer (``1.5`` would silently become 1)."""
    if type(value) is not int:
        raise ValueError(f"{value!r:.40} is not an integer")
    return value


def _finite(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{value!r:.40} is not a finite number")
    return float(value)


def _training_polygons(segm: Any, image: TrainImage, path: str, ann_id: Any) -> list[np.ndarray]:
    """The polygons of one annotation's ``segmentation``, checked: an RLE must decode to exactly its
    image's size (pycocotools would decode garbage or fail), polygon coordinates must be finite
    numbers; polygons of fewer than 3 points are left out, as detectron2 does in training.

    Raises:
        InputError: an RLE that does not decode or has another size than its image, or a polygon
            with coordinates that are not finite numbers; the message names the file and annotation.
    """
    where = f"{path!r}: annotation {ann_id!r}"
    if isinstance(segm, dict):
        problem = rle_problems([segm])[0]
        if problem:
            raise InputError(f"{where}: 'segmentation' is not a valid RLE ({problem}); fix or remove the annotation")
        size = rle_size(segm)
        if size != (image.height, image.width):
            raise InputError(f"{where}: its 'segmentation' is {size[0]}x{size[1]} but image {image.image_id} is "
                             f"{image.height}x{image.width}; fix the mask or the image's 'height' / 'width'")
        return rle_to_polygons(segm, image.height, image.width)
    if not isinstance(segm, list):
        return []
    polygons = []
    for poly in segm:
        if not isinstance(poly, list) or len(poly) % 2 or len(poly) < 6:
            continue  # detectron2 drops such polygons in training (counted and warned about by the caller)
        if not all(type(v) in (int, float) and math.isfinite(v) for v in poly):
            raise InputError(f"{where}: polygon coordinates must be finite numbers, got {poly!r:.80}")
        polygons.append(np.asarray(poly, dtype=np.float64))
    return polygons


def load_training_annotations(
    coco_json: str | os.PathLike, images_dir: str | os.PathLike, *, filter_empty: bool = True
) -> tuple[list[TrainImage], list[int], list[str]]:
    """Read a COCO instance-segmentation file for training.

    Args:
        coco_json: annotation file (polygon or RLE segmentations).
        images_dir: folder the ``file_name`` entries are relative to.
        filter_empty: drop images with no usable annotation.

    Returns:
        (images, contiguous_to_dataset_id, class_names).

    Raises:
        MissingFileError / InputError: unreadable or malformed file, a ``file_name`` that
            leaves ``images_dir``, an annotation of an unknown image or category, a malformed box
            (not 4 finite numbers, or a negative width or height), a malformed mask
            (:func:`_training_polygons`).
    """
    path = os.fspath(coco_json)
    data = load_coco_dict(path)
    ids, names = load_coco_categories(data)
    to_contiguous = {cid: i for i, cid in enumerate(ids)}
    images: dict[int, TrainImage] = {}
    for entry in data["images"]:
        try:
            image_id, file_name = _integer(entry["id"]), entry["file_name"]
            h, w = _integer(entry["height"]), _integer(entry["width"])
            if h <= 0 or w <= 0:
                raise ValueError(f"its size must be positive, got {h} x {w}")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path!r}: image entry {entry!r:.120} needs id, file_name, height, width ({exc})") from None
        images[image_id] = TrainImage(image_id, path_inside(images_dir, file_name, "file_name"), h, w, [])
    dropped_crowd = dropped_no_polygon = 0
    for ann in data.get("annotations", []):
        try:
            image = images[_integer(ann["image_id"])]
            category = to_contiguous[_integer(ann["category_id"])]
            x, y, bw, bh = (_finite(v) for v in ann["bbox"])
            if bw < 0 or bh < 0:
                raise ValueError(f"its width and height must be >= 0, got {bw:g} x {bh:g}")
        except KeyError as exc:
            raise InputError(
                f"{path!r}: annotation {ann.get('id')!r} refers to an unknown image or category ({exc})"
            ) from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path!r}: annotation {ann.get('id')!r} has a malformed bbox ({exc})") from None
        if ann.get("iscrowd", 0):
            dropped_crowd += 1
            continue
        polygons = _training_polygons(ann.get("segmentation"), image, path, ann.get("id"))
        if not polygons:
            dropped_no_polygon += 1
            continue
        image.instances.append(TrainInstance((x, y, x + bw, y + bh), category, polygons))
    if dropped_no_polygon:
        logger.warning(
            "%s: %d annotation(s) without a usable segmentation (polygons need >= 3 points) were dropped",
            path, dropped_no_polygon,
        )
    if dropped_crowd:
        logger.info("%s: %d crowd annotation(s) ignored, as upstream does in training", path, dropped_crowd)
    out = [im for im in images.values() if im.instances or not filter_empty]
    if not out:
        raise InputError(f"{path!r} has no image with a usable instance annotation to train on")
    return out, ids, names


@dataclass(frozen=True)
class AugmentSettings:
    """``INPUT`` training keys.

    Attributes:
        min_sizes: ``MIN_SIZE_TRAIN``; sampling ``"choice"`` (one of them) or ``"range"``
            (an integer in ``[min, max]``, ``MIN_SIZE_TRAIN_SAMPLING``).
        max_size: ``MAX_SIZE_TRAIN``.
        flip: ``RANDOM_FLIP``: ``"horizontal"``, ``"vertical"`` or ``"none"``.
        input_format: ``INPUT.FORMAT``.
    """

    min_sizes: tuple[int, ...] = (800,)
    sampling: str = "choice"
    max_size: int = 1333
    flip: str = "horizontal"
    input_format: str = "BGR"

    def __post_init__(self) -> None:
        if self.sampling not in ("choice", "range"):
            raise InputError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {self.sampling!r}")
        if self.sampling == "range" and len(self.min_sizes) != 2:
            raise InputError(f"INPUT.MIN_SIZE_TRAIN needs two values with 'range' sampling, got {self.min_sizes}")
        if self.flip not in ("horizontal", "vertical", "none"):
            raise InputError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {self.flip!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentSettings:
        sizes = cfg.INPUT.MIN_SIZE_TRAIN
        sizes = (int(sizes),) if isinstance(sizes, (int, float)) else tuple(int(s) for s in sizes)
        return cls(sizes, str(cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING), int(cfg.INPUT.MAX_SIZE_TRAIN),
                   str(cfg.INPUT.RANDOM_FLIP), str(cfg.INPUT.FORMAT))


def map_training_image(
    image: TrainImage,
    settings: AugmentSettings,
    rng: np.random.Generator,
    *,
    short_edge: int | None = None,
    flip: bool | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read, resize and flip one image and its annotations.

    Args:
        rng: draws the short edge and the flip.
        short_edge, flip: fixed choices instead of random ones.

    Returns:
        image (ndarray[3, h, w] uint8) and its target: ``boxes`` Tensor[G, 4] float32,
        ``classes`` Tensor[G] int64, ``polygons`` per instance a list of float64 arrays, in the
        resized (and flipped) image's pixels.
    """
    img = read_image(image.path, settings.input_format)
    h, w = img.shape[:2]
    if (h, w) != (image.height, image.width):
        raise InputError(
            f"{image.path}: the annotation file says {image.height}x{image.width}, the image is {h}x{w}"
        )
    if settings.sampling == "choice":
        short = int(settings.min_sizes[int(rng.integers(len(settings.min_sizes)))])
    else:
        short = int(rng.integers(settings.min_sizes[0], settings.min_sizes[1] + 1))
    short = short if short_edge is None else int(short_edge)
    new_h, new_w = get_resize_shape(h, w, short, settings.max_size)
    img = resize_image(img, new_h, new_w)
    drawn = settings.flip != "none" and bool(rng.random() < 0.5)
    flip = drawn if flip is None else bool(flip)
    horizontal = settings.flip == "horizontal"
    if flip:
        img = img[:, ::-1] if horizontal else img[::-1]
    sx, sy = new_w / w, new_h / h
    boxes, classes, polygons = [], [], []
    for inst in image.instances:
        x1, y1, x2, y2 = inst.box[0] * sx, inst.box[1] * sy, inst.box[2] * sx, inst.box[3] * sy
        if flip and horizontal:
            x1, x2 = new_w - x2, new_w - x1
        elif flip:
            y1, y2 = new_h - y2, new_h - y1
        x1, x2 = min(max(x1, 0.0), new_w), min(max(x2, 0.0), new_w)
        y1, y2 = min(max(y1, 0.0), new_h), min(max(y2, 0.0), new_h)
        if not (x2 > x1 and y2 > y1):
            continue  # detectron2's filter_empty_instances
        polys = []
        for p in inst.polygons:
            q = np.array(p, dtype=np.float64)
            q[0::2] *= sx
            q[1::2] *= sy
            if flip and horizontal:
                q[0::2] = new_w - q[0::2]
            elif flip:
                q[1::2] = new_h - q[1::2]
            polys.append(q)
        boxes.append((x1, y1, x2, y2))
        classes.append(inst.category)
        polygons.append(polys)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4).to(torch.float32),
        "classes": torch.tensor(classes, dtype=torch.int64),
        "polygons": polygons,
    }
    return np.ascontiguousarray(img.transpose(2, 0, 1)), target


class TrainingBatches(torch.utils.data.Dataset):
    """Batch ``i`` of a run: ``images_per_batch`` images of epoch-wise shuffled order, each mapped
    with its own random stream; a function of ``(seed, i)`` only.

    Args:
        images: the training set.
        settings: augmentation.
        images_per_batch: ``SOLVER.IMS_PER_BATCH``.
        seed: run seed.
    """

    def __init__(self, images: Sequence[TrainImage], settings: AugmentSettings, images_per_batch: int, seed: int) -> None:
        if images_per_batch < 1:
            raise InputError(f"SOLVER.IMS_PER_BATCH must be >= 1, got {images_per_batch}")
        self.images = list(images)
        self.settings = settings
        self.images_per_batch = int(images_per_batch)
        self.seed = int(seed)
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 1 << 40  # indexed by iteration

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.images))}
        return self._orders[epoch]

    def indices(self, iteration: int) -> list[int]:
        """Positions in :attr:`images` of iteration ``iteration``'s batch."""
        n = len(self.images)
        out = []
        for slot in range(iteration * self.images_per_batch, (iteration + 1) * self.images_per_batch):
            out.append(int(self._order(slot // n)[slot % n]))
        return out

    def __getitem__(self, iteration: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
        batch = []
        for k, index in enumerate(self.indices(iteration)):
            rng = np.random.default_rng([self.seed, iteration, k])
            batch.append(map_training_image(self.images[index], self.settings, rng))
        return batch


def collate_training_batch(
    samples: list[tuple[np.ndarray, dict[str, Any]]], size_divisibility: int
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Zero-pad mapped images bottom/right to a common multiple of ``size_divisibility``.

    Returns:
        raw images Tensor[B, 3, H, W] uint8, image sizes Tensor[B, 2] int64, targets.
    """
    d = max(int(size_divisibility), 1)
    h = max(im.shape[1] for im, _ in samples)
    w = max(im.shape[2] for im, _ in samples)
    h, w = -(-h // d) * d, -(-w // d) * d
    raw = torch.zeros((len(samples), 3, h, w), dtype=torch.uint8)
    for i, (im, _) in enumerate(samples):
        raw[i, :, : im.shape[1], : im.shape[2]] = torch.from_numpy(im)
    sizes = torch.tensor([[im.shape[1], im.shape[2]] for im, _ in samples], dtype=torch.int64)
    return raw, sizes, [t for _, t in samples]


class CollatedBatches(torch.utils.data.Dataset):
    """:class:`TrainingBatches` collated for the model: item ``i`` is
    :func:`collate_training_batch` of batch ``i`` (what a data-loader worker returns)."""

    def __init__(self, batches: TrainingBatches, size_divisibility: int) -> None:
        self.batches = batches
        self.size_divisibility = int(size_divisibility)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        return collate_training_batch(self.batches[iteration], self.size_divisibility)
