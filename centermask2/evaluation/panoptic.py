"""Panoptic results in COCO panoptic format and panoptic quality (PQ), without detectron2 or panopticapi.

Three parts, each with upstream's exact semantics:

* PNG id coding (panopticapi's ``rgb2id`` / ``id2rgb``): a pixel's segment id is
  ``R + 256 G + 256^2 B``, 0 = void (unlabelled).
* :class:`PanopticResultsWriter`: what detectron2's ``COCOPanopticEvaluator`` writes for a
  model's ``panoptic_seg`` output (a segment-id map and ``segments_info`` with contiguous
  category ids, as ``combine_semantic_and_instance_outputs`` gives them): ``panoptic_results.json``
  (the ground-truth JSON with its ``annotations`` replaced by the predictions, dataset category ids)
  and ``panoptic_results/<stem>.png``; optionally ``sem_seg_results/<stem>.png``.
* :func:`compute_pq`: panopticapi's ``pq_compute``. Per image, a predicted and a ground-truth
  segment of the same category match when their IoU is > 0.5, where the union leaves out the
  prediction's pixels on ground-truth void. Unmatched ground truth counts as a false negative
  unless it is a crowd region (``iscrowd``); an unmatched prediction counts as a false positive
  unless more than half of it lies on void plus the crowd region of its category. PQ, SQ and RQ
  are averaged over the categories seen (tp + fp + fn > 0), for all, things and stuff.
  Ground-truth areas come from the JSON (``area``), prediction areas from the PNGs, as in
  panopticapi.

Files from elsewhere are checked once, when read (:func:`read_panoptic_gt`,
:func:`read_panoptic_results`, :func:`read_panoptic_png`): a missing or wrong-size PNG, unknown
categories, ids a PNG holds that its JSON does not list (or the reverse for predictions), duplicate
images and file names that leave their folder are refused with an error naming the file and value.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.panoptic_categories import PanopticCategories, coco_panoptic_separated
from ..errors import InputError, MissingFileError
from ..fileio import atomic_write_bytes, atomic_write_json, path_inside, read_json
from .coco import format_table
from .sem_seg import open_png, sem_seg_labels, write_sem_seg_png

__all__ = [
    "OFFSET",
    "VOID",
    "MAX_SEGMENT_ID",
    "rgb2id",
    "id2rgb",
    "read_panoptic_png",
    "PanopticSegments",
    "PanopticImage",
    "PanopticAnnotations",
    "read_panoptic_gt",
    "read_panoptic_results",
    "convert_segments_info",
    "PANOPTIC_RESULTS_NAME",
    "SEM_SEG_RESULTS_DIR",
    "panoptic_png_name",
    "write_panoptic_image",
    "write_panoptic_json",
    "PanopticResultsWriter",
    "PQStat",
    "compute_pq",
    "evaluate_panoptic",
    "format_pq_table",
]

logger = logging.getLogger(__name__)

#: one more than the largest segment id: ``gt_id * OFFSET + pred_id`` codes a (gt, pred) pair
OFFSET = 256**3
#: the segment id of unlabelled pixels
VOID = 0
MAX_SEGMENT_ID = OFFSET - 1
_GROUPS = (("All", None), ("Things", True), ("Stuff", False))


# ---------------------------------------------------------------- PNG id coding


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG's pixels: ``R + 256 G + 256^2 B``.

    Args:
        rgb: uint8 [H, W, 3] (a 4th, alpha channel is ignored).

    Returns:
        int32 [H, W].
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise InputError(f"rgb2id expects a uint8 [H, W, 3] array, got {rgb.dtype} {list(rgb.shape)}")
    c = rgb[..., :3].astype(np.int32)
    return c[..., 0] + 256 * c[..., 1] + 65536 * c[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """The colours that code segment ids in a panoptic PNG (inverse of :func:`rgb2id`).

    Args:
        ids: integer [H, W], values 0..2^24-1 (0 = void).

    Returns:
        uint8 [H, W, 3] (R, G, B).

    Raises:
        InputError: not integers, or an id outside 0..2^24-1 (it cannot be stored in 3 bytes).
    """
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"segment ids must be integers, got dtype {ids.dtype}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        bad = low if low < 0 else high if high > MAX_SEGMENT_ID else None
        if bad is not None:
            raise InputError(f"segment id {bad} is outside 0..{MAX_SEGMENT_ID}; a panoptic PNG stores ids in 3 bytes")
    v = ids.astype(np.uint32)
    return np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], axis=-1).astype(np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    with io.BytesIO() as buf:
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()


def read_panoptic_png(
    path: str | os.PathLike,
    expected_hw: tuple[int, int] | None = None,
    *,
    what: str = "panoptic PNG",
    expected_what: str = "the image",
    hint: str = "",
) -> np.ndarray:
    """Read a panoptic PNG's segment ids, checking its format and size first.

    Args:
        path: the PNG (RGB; RGBA with the alpha ignored).
        expected_hw: (height, width) it must have, checked before the pixels are decoded.
        what, expected_what, hint: for messages (e.g. ``"panoptic ground truth PNG"``, ``"image 7"``,
            what to do about it).

    Returns:
        int32 [H, W] segment ids (0 = void).

    Raises:
        MissingFileError: no such file.
        InputError: not a readable PNG, of another size, or not RGB.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    with open_png(path, what, hint) as image:
        if image.format != "PNG":
            raise InputError(
                f"{what} {str(path)!r} is {image.format or 'not a known image format'}, not PNG: segment ids need a "
                f"lossless file{tail}"
            )
        width, height = image.size
        if expected_hw is not None and (height, width) != tuple(expected_hw):
            raise InputError(
                f"{what} {str(path)!r} is {width}x{height} (width x height) but {expected_what} is "
                f"{expected_hw[1]}x{expected_hw[0]} (width x height){tail}"
            )
        if image.mode not in ("RGB", "RGBA"):
            raise InputError(
                f"{what} {str(path)!r} has mode {image.mode!r}; panoptic PNGs are RGB (id = R + 256 G + 256^2 B){tail}"
            )
        try:
            rgb = np.asarray(image)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot decode {what} {str(path)!r}: {exc}{tail}") from None
    return rgb2id(rgb)


# ---------------------------------------------------------------- reading COCO panoptic JSON


@dataclass(frozen=True)
class PanopticSegments:
    """One image's ``segments_info`` as arrays, in JSON order (S segments).

    Attributes:
        ids: int64 [S] segment ids (1..2^24-1, unique).
        category_ids: int64 [S] dataset category ids.
        iscrowd: bool [S].
        areas: int64 [S] the JSON's ``area`` (ground truth), or None (predictions: areas come from the PNG).
    """

    ids: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    areas: np.ndarray | None


@dataclass(frozen=True)
class PanopticImage:
    """One annotation of a COCO panoptic file: which image, which PNG, which segments."""

    image_id: int
    file_name: str
    png_path: Path
    segments: PanopticSegments
    #: (height, width) from the ground truth JSON's ``images`` entry (None for predictions)
    size: tuple[int, int] | None


@dataclass(frozen=True)
class PanopticAnnotations:
    """A validated COCO panoptic file (ground truth or predictions) and its PNG folder.

    Attributes:
        json_path: the JSON file.
        png_root: the folder its ``file_name`` values are relative to.
        kind: ``"ground truth"`` or ``"results"`` (for messages).
        categories: dataset id -> (name, isthing), in the JSON's order (empty when a results
            file has no ``categories``).
        images: image id -> :class:`PanopticImage`, in the JSON's ``annotations`` order.
    """

    json_path: Path
    png_root: Path
    kind: str
    categories: Mapping[int, tuple[str, bool]]
    images: Mapping[int, PanopticImage] = field(repr=False)

    def read_ids(
        self, image_id: int, expected_hw: tuple[int, int] | None = None, expected_what: str | None = None
    ) -> np.ndarray:
        """The segment ids of ``image_id``'s PNG: int32 [H, W].

        The size is checked against ``expected_hw`` if given, else against the JSON's ``images``
        entry. That the PNG's ids and the JSON's segments agree is checked by :func:`compute_pq`,
        which counts them anyway.
        """
        image = self.images[image_id]
        hw = expected_hw if expected_hw is not None else image.size
        return read_panoptic_png(
            image.png_path, hw, what=f"panoptic {self.kind} PNG",
            expected_what=expected_what or f"image {image_id} in {str(self.json_path)!r}",
            hint=f"fix {str(self.json_path)!r} or the PNG folder {str(self.png_root)!r}",
        )


def _as_int(value: Any, where: str, key: str) -> int:
    """``value`` as an int when it is an integral number (``3`` or ``3.0``), else a named error."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise InputError(f"{where}: {key!r} {value!r} is not an integer")


def _flag(value: Any, where: str, key: str) -> bool:
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return bool(value)
    raise InputError(f"{where}: {key!r} {value!r} must be 0 or 1")


def _read_categories(data: Mapping[str, Any], path: str, required: bool) -> dict[int, tuple[str, bool]]:
    cats = data.get("categories")
    if cats is None and not required:
        return {}
    if not isinstance(cats, list) or not cats:
        raise InputError(f"{path!r} has no 'categories' list; a COCO panoptic file lists its categories with 'isthing'")
    out: dict[int, tuple[str, bool]] = {}
    for k, cat in enumerate(cats):
        where = f"{path!r}: category {k}"
        if not isinstance(cat, dict) or "id" not in cat or "isthing" not in cat:
            raise InputError(f"{where} needs 'id' and 'isthing', got {cat!r}")
        cid = _as_int(cat["id"], where, "id")
        if cid in out:
            raise InputError(f"{path!r} lists category id {cid} twice")
        out[cid] = (str(cat.get("name", cid)), _flag(cat["isthing"], where, "isthing"))
    return out


def _read_sizes(data: Mapping[str, Any], path: str) -> dict[int, tuple[int, int]]:
    images = data.get("images")
    if not isinstance(images, list):
        raise InputError(f"{path!r} has no 'images' list; ground truth needs each image's id, height and width")
    sizes: dict[int, tuple[int, int]] = {}
    for k, im in enumerate(images):
        where = f"{path!r}: images[{k}]"
        if not isinstance(im, dict) or any(key not in im for key in ("id", "height", "width")):
            raise InputError(f"{where} needs 'id', 'height' and 'width'")
        h, w = _as_int(im["height"], where, "height"), _as_int(im["width"], where, "width")
        if h <= 0 or w <= 0:
            raise InputError(f"{where}: size {w}x{h} (width x height) is not positive")
        sizes[_as_int(im["id"], where, "id")] = (h, w)
    return sizes


def _read_segments(
    entries: Any, where: str, categories: Mapping[int, tuple[str, bool]], need_area: bool
) -> PanopticSegments:
    if not isinstance(entries, list):
        raise InputError(f"{where}: 'segments_info' must be a list, got {type(entries).__name__}")
    ids, cats, crowd, areas = [], [], [], []
    for k, seg in enumerate(entries):
        at = f"{where}, segment {k}"
        if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
            raise InputError(f"{at} needs 'id' and 'category_id', got {seg!r}")
        sid = _as_int(seg["id"], at, "id")
        if not 1 <= sid <= MAX_SEGMENT_ID:
            raise InputError(f"{at}: 'id' {sid} is outside 1..{MAX_SEGMENT_ID} (0 is void, the PNG's unlabelled pixels)")
        cid = _as_int(seg["category_id"], at, "category_id")
        if categories and cid not in categories:
            raise InputError(
                f"{at}: category_id {cid} is not one of the {len(categories)} categories in the file's 'categories'"
            )
        ids.append(sid)
        cats.append(cid)
        crowd.append(_flag(seg.get("iscrowd", 0), at, "iscrowd"))
        if need_area:
            if "area" not in seg:
                raise InputError(f"{at} has no 'area' (ground truth needs it; panopticapi takes the areas from the JSON)")
            area = _as_int(seg["area"], at, "area")
            if area < 0:
                raise InputError(f"{at}: 'area' {area} is negative")
            areas.append(area)
    repeated = [sid for sid, n in Counter(ids).items() if n > 1]
    if repeated:
        raise InputError(f"{where} lists segment id {repeated[0]} twice; every segment needs its own id")
    return PanopticSegments(
        ids=np.array(ids, dtype=np.int64), category_ids=np.array(cats, dtype=np.int64),
        iscrowd=np.array(crowd, dtype=bool), areas=np.array(areas, dtype=np.int64) if need_area else None,
    )


def _read_panoptic(json_path: str | os.PathLike, png_root: str | os.PathLike | None, kind: str) -> PanopticAnnotations:
    is_gt = kind == "ground truth"
    json_path = Path(json_path)
    # panopticapi's convention: the PNGs of X.json are in the folder X
    root = Path(png_root) if png_root is not None else json_path.with_suffix("")
    path = str(json_path)
    data = read_json(json_path, f"COCO panoptic {kind} file", dict)
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise InputError(f"{path!r} has no 'annotations' list; it is not a COCO panoptic {kind} file")
    categories = _read_categories(data, path, required=is_gt)
    sizes = _read_sizes(data, path) if is_gt else {}  # predictions are checked against the ground truth
    if not root.is_dir():
        raise MissingFileError(
            f"folder of panoptic {kind} PNGs {str(root)!r} not found (for {path!r}; by default the folder next to the "
            "JSON named by its stem)"
        )
    images: dict[int, PanopticImage] = {}
    ids, names = Counter(), Counter()
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict) or any(key not in ann for key in ("image_id", "file_name", "segments_info")):
            raise InputError(f"{path!r}: annotations[{k}] needs 'image_id', 'file_name' and 'segments_info'")
        image_id = _as_int(ann["image_id"], f"{path!r}: annotations[{k}]", "image_id")
        where = f"{path!r}: image {image_id}"
        if is_gt and image_id not in sizes:
            raise InputError(f"{where}: the annotation of image {image_id} refers to an image not in its 'images' list")
        png_path = path_inside(root, ann["file_name"], f"{where}: file_name")
        ids[image_id] += 1
        names[ann["file_name"]] += 1
        segments = _read_segments(ann["segments_info"], where, categories, need_area=is_gt)
        images[image_id] = PanopticImage(image_id, ann["file_name"], png_path, segments, sizes.get(image_id))
    for label, counts in (("image id(s)", ids), ("file_name(s)", names)):
        repeated = [str(v) for v, n in counts.items() if n > 1]
        if repeated:
            raise InputError(
                f"{path!r} lists the {label} {', '.join(repeated[:10])} more than once in 'annotations'; every image "
                "needs exactly one annotation and PNG"
            )
    missing = [im for im in images.values() if not im.png_path.is_file()]
    if missing:
        raise MissingFileError(
            f"panoptic {kind} PNG {str(missing[0].png_path)!r} not found (image {missing[0].image_id} of {path!r}"
            f"{f', and {len(missing) - 1} more' if len(missing) > 1 else ''}); give the folder that holds the PNGs"
        )
    return PanopticAnnotations(json_path, root, kind, categories, images)


def read_panoptic_gt(json_path: str | os.PathLike, png_root: str | os.PathLike | None = None) -> PanopticAnnotations:
    """Read and check COCO panoptic ground truth (e.g. ``panoptic_val2017.json`` + ``panoptic_val2017/``).

    Args:
        json_path: the JSON: ``images`` (id, height, width), ``categories`` (id, isthing) and
            ``annotations`` (image_id, file_name, segments_info with id, category_id, iscrowd, area).
        png_root: the PNG folder; default: the folder next to the JSON named by its stem.

    Raises:
        MissingFileError: the JSON, the folder or a PNG does not exist.
        InputError: anything else wrong in the JSON (see the module docstring).
    """
    return _read_panoptic(json_path, png_root, "ground truth")


def read_panoptic_results(json_path: str | os.PathLike, png_root: str | os.PathLike | None = None) -> PanopticAnnotations:
    """Read and check panoptic predictions in COCO panoptic format (``panoptic_results.json``).

    Args:
        json_path: the JSON (``annotations`` with image_id, file_name, segments_info with id and
            category_id; ``images`` and ``categories`` optional).
        png_root: the PNG folder; default: the folder next to the JSON named by its stem
            (``panoptic_results/``).

    Raises:
        MissingFileError, InputError: as :func:`read_panoptic_gt`.
    """
    return _read_panoptic(json_path, png_root, "results")


# ---------------------------------------------------------------- writing predictions


def _plain(value: Any) -> Any:
    """numpy / torch scalars as Python numbers, so that the JSON can be written."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else value


def convert_segments_info(
    segments_info: Sequence[Mapping[str, Any]], categories: PanopticCategories | None = None
) -> list[dict[str, Any]]:
    """Contiguous category ids -> dataset ids, as detectron2's ``COCOPanopticEvaluator``.

    A segment's ``isthing`` is removed; things map through the thing classes, stuff through the
    stuff classes (class 0, ``"things"``, is refused); a segment without ``isthing`` already has a
    dataset id and is kept. The input dicts are not modified.

    Raises:
        InputError: a category id that is no contiguous class of its kind.
    """
    categories = categories or coco_panoptic_separated()
    out = []
    for seg in segments_info:
        seg = {key: _plain(value) for key, value in seg.items()}
        isthing = seg.pop("isthing", None)
        if isthing is not None:
            cid = seg["category_id"]
            seg["category_id"] = (categories.thing_to_dataset_id(cid) if isthing is True
                                  else categories.stuff_to_dataset_id(cid))
        out.append(seg)
    return out


def _check_written_ids(ids: np.ndarray, segments: Sequence[Mapping[str, Any]]) -> None:
    """The id map and its segments must agree, as the readers require."""
    listed = [seg.get("id") for seg in segments]
    if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= MAX_SEGMENT_ID for i in listed):
        raise InputError(f"segment ids must be integers 1..{MAX_SEGMENT_ID}, got {listed}")
    if len(set(listed)) != len(listed):
        raise InputError(f"segments_info repeats a segment id: {listed}")
    present = np.unique(ids)
    present = present[present != VOID]
    unlisted = np.setdiff1d(present, listed)
    absent = np.setdiff1d(listed, present)
    if unlisted.size or absent.size:
        raise InputError(
            f"panoptic_seg and segments_info disagree: segment id(s) {unlisted.tolist()[:10]} are in the map but not "
            f"listed, id(s) {absent.tolist()[:10]} are listed but cover no pixel"
        )


#: the panoptic results file and, next to it, the folder of its PNGs (the COCO convention)
PANOPTIC_RESULTS_NAME = "panoptic_results.json"
#: the folder of the per-pixel semantic labels, next to the panoptic results
SEM_SEG_RESULTS_DIR = "sem_seg_results"


def panoptic_png_name(file_name: str | os.PathLike) -> str:
    """The PNG name of an input image's panoptic and semantic results: ``<stem>.png``."""
    return os.path.splitext(os.path.basename(os.fspath(file_name)))[0] + ".png"


def write_panoptic_image(
    output_dir: str | os.PathLike,
    image_id: int,
    file_name: str,
    panoptic_seg: np.ndarray,
    segments_info: Sequence[Mapping[str, Any]],
    sem_seg: np.ndarray | None = None,
    categories: PanopticCategories | None = None,
    *,
    json_name: str = PANOPTIC_RESULTS_NAME,
) -> dict[str, Any]:
    """Write one image's panoptic prediction as detectron2's ``COCOPanopticEvaluator`` does:
    ``OUT/<json stem>/<stem>.png`` (ids as ``R + 256 G + 256^2 B``) and, given a semantic map,
    ``OUT/sem_seg_results/<stem>.png`` (uint8 contiguous stuff classes); atomically. A pure
    per-image step: workers of a stage can run it (the JSON is :func:`write_panoptic_json`'s).

    Args:
        image_id: the dataset image id.
        file_name: the input image's file name (or path); the PNGs are named ``<stem>.png``.
        panoptic_seg: integer [H, W] segment ids in original-image pixels, 0 = void.
        segments_info: per segment ``{"id", "isthing", "category_id", ...}`` with contiguous
            category ids (things: ``score``, ``instance_id``; stuff: ``area``), or dataset ids
            without ``isthing``.
        sem_seg: optional semantic prediction, [H, W] contiguous stuff classes or [C, H, W]
            scores (argmax over C).
        categories: the dataset's categories (default COCO panoptic, detectron2's separated ids).

    Returns:
        the annotation as it goes into the JSON: ``{"image_id", "file_name", "segments_info"}``
        (dataset category ids), plus ``"height"`` / ``"width"`` for the JSON's image list.

    Raises:
        InputError: the map and the segments disagree, or an unknown class.
    """
    categories = categories or coco_panoptic_separated()
    ids = np.asarray(panoptic_seg)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"panoptic_seg must be an integer [H, W] map, got {ids.dtype} {list(ids.shape)}")
    if segments_info is None:
        raise InputError("segments_info is None (a category * label_divisor id map); give the segments as "
                         "combine_semantic_and_instance_outputs produces them")
    segments = convert_segments_info(segments_info, categories)
    _check_written_ids(ids, segments)
    png_name = panoptic_png_name(file_name)
    labels = None if sem_seg is None else sem_seg_labels(sem_seg, categories.num_stuff_classes)
    if labels is not None and labels.shape != ids.shape:
        raise InputError(f"sem_seg is {list(labels.shape)} but panoptic_seg is {list(ids.shape)}")
    out = Path(output_dir)
    atomic_write_bytes(_png_bytes(id2rgb(ids)), out / Path(json_name).stem / png_name)
    if labels is not None:
        write_sem_seg_png(labels, out / SEM_SEG_RESULTS_DIR / png_name)
    return {"image_id": int(image_id), "file_name": png_name, "segments_info": segments,
            "height": int(ids.shape[0]), "width": int(ids.shape[1]), "source": os.path.basename(os.fspath(file_name))}


def write_panoptic_json(
    json_path: str | os.PathLike,
    annotations: Sequence[Mapping[str, Any]],
    categories: PanopticCategories | None = None,
    base: str | os.PathLike | Mapping[str, Any] | None = None,
) -> Path:
    """Write the panoptic results file of :func:`write_panoptic_image`'s annotations (atomically).

    Args:
        annotations: per image, in output order.
        base: the ground-truth panoptic JSON (path or dict): as detectron2, the file is a copy
            of it with ``annotations`` replaced. Without it: ``images`` (what was written) and
            the dataset's ``categories``.

    Raises:
        InputError: two images with the same id or PNG name.
    """
    names: set[str] = set()
    ids: set[int] = set()
    entries, images = [], []
    for ann in annotations:
        if ann["file_name"] in names or int(ann["image_id"]) in ids:
            raise InputError(f"image {ann['image_id']} ({ann['file_name']}) was already written; every image needs "
                             "its own name and id")
        names.add(ann["file_name"])
        ids.add(int(ann["image_id"]))
        entries.append({k: ann[k] for k in ("image_id", "file_name", "segments_info")})
        images.append({"id": int(ann["image_id"]), "file_name": ann.get("source", ann["file_name"]),
                       "height": ann.get("height"), "width": ann.get("width")})
    if base is None:
        data: dict[str, Any] = {"images": images, "annotations": entries,
                                "categories": (categories or coco_panoptic_separated()).categories_json()}
    else:
        data = dict(base) if isinstance(base, Mapping) else read_json(base, "COCO panoptic ground truth file", dict)
        data["annotations"] = entries
    atomic_write_json(data, json_path)
    logger.info("Wrote %d panoptic predictions to %s", len(entries), json_path)
    return Path(json_path)


class PanopticResultsWriter:
    """Write panoptic predictions image by image, then the JSON (:func:`write_panoptic_image`,
    :func:`write_panoptic_json`): ``OUT/panoptic_results.json``, ``OUT/panoptic_results/<stem>.png``
    and ``OUT/sem_seg_results/<stem>.png``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        categories: PanopticCategories | None = None,
        *,
        json_name: str = PANOPTIC_RESULTS_NAME,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.json_name = json_name
        self.json_path = self.output_dir / json_name
        self.categories = categories or coco_panoptic_separated()
        self._annotations: list[dict[str, Any]] = []

    def add(
        self,
        image_id: int,
        file_name: str,
        panoptic_seg: np.ndarray,
        segments_info: Sequence[Mapping[str, Any]],
        sem_seg: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Write one image's prediction (:func:`write_panoptic_image`).

        Raises:
            InputError: as :func:`write_panoptic_image`, or the image (id or PNG name) was already written.
        """
        png_name = panoptic_png_name(file_name)
        if any(a["file_name"] == png_name or a["image_id"] == int(image_id) for a in self._annotations):
            raise InputError(f"image {image_id} ({png_name}) was already written; every image needs its own name and id")
        annotation = write_panoptic_image(self.output_dir, image_id, file_name, panoptic_seg, segments_info, sem_seg,
                                          self.categories, json_name=self.json_name)
        self._annotations.append(annotation)
        return {k: annotation[k] for k in ("image_id", "file_name", "segments_info")}

    @property
    def annotations(self) -> list[dict[str, Any]]:
        """The annotations written so far, in order."""
        return [{k: a[k] for k in ("image_id", "file_name", "segments_info")} for a in self._annotations]

    def finish(self, base: str | os.PathLike | Mapping[str, Any] | None = None) -> Path:
        """Write the JSON (:func:`write_panoptic_json`) and return its path."""
        return write_panoptic_json(self.json_path, self._annotations, self.categories, base)


# ---------------------------------------------------------------- panoptic quality


@dataclass
class PQStat:
    """Per-category matching counts over a dataset (panopticapi's ``PQStat``), arrays of length C.

    Attributes:
        category_ids: the ground truth's categories, in its JSON order.
        names, isthing: their names and kinds.
        tp, fp, fn: int64 [C] true positives, false positives, false negatives.
        iou: float64 [C] sum of the IoUs of the true positives.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    isthing: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray

    @classmethod
    def zeros(cls, categories: Mapping[int, tuple[str, bool]]) -> PQStat:
        n = len(categories)
        return cls(
            category_ids=tuple(categories), names=tuple(name for name, _ in categories.values()),
            isthing=np.array([isthing for _, isthing in categories.values()], dtype=bool),
            tp=np.zeros(n, np.int64), fp=np.zeros(n, np.int64), fn=np.zeros(n, np.int64), iou=np.zeros(n, np.float64),
        )

    def category(self, category_id: int) -> dict[str, float | int]:
        """``{"iou", "tp", "fp", "fn"}`` of one category."""
        k = self.category_ids.index(category_id)
        return {"iou": float(self.iou[k]), "tp": int(self.tp[k]), "fp": int(self.fp[k]), "fn": int(self.fn[k])}

    def average(self, isthing: bool | None) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """panopticapi's ``pq_average``: mean PQ/SQ/RQ over the categories seen, and per category.

        Args:
            isthing: True things only, False stuff only, None all.

        Returns:
            ``({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}})`` as fractions; a category
            never seen (tp + fp + fn = 0) gets zeros and does not count in ``n``; with n = 0 the
            means are NaN (panopticapi divides by zero).
        """
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict[str, float]] = {}
        for k, cid in enumerate(self.category_ids):
            if isthing is not None and bool(self.isthing[k]) != isthing:
                continue
            tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])
            if tp + fp + fn == 0:
                per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = tp + 0.5 * fp + 0.5 * fn
            per_class[cid] = {"pq": iou / denominator, "sq": iou / tp if tp else 0.0, "rq": tp / denominator}
            pq, sq, rq = pq + per_class[cid]["pq"], sq + per_class[cid]["sq"], rq + per_class[cid]["rq"]
        if n == 0:
            return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def summary(self) -> dict[str, Any]:
        """What panopticapi's ``pq_compute`` returns: ``All``, ``Things``, ``Stuff`` (pq, sq, rq, n)
        and ``per_class`` (category id -> pq, sq, rq), fractions."""
        out: dict[str, Any] = {}
        for name, isthing in _GROUPS:
            out[name], per_class = self.average(isthing)
            if isthing is None:
                out["per_class"] = per_class
        return out

    def metrics(self) -> dict[str, float]:
        """detectron2's ``panoptic_seg`` metrics in percent: PQ, SQ, RQ, then ``_th`` and ``_st``."""
        out: dict[str, float] = {}
        for (_, isthing), suffix in zip(_GROUPS, ("", "_th", "_st")):
            avg, _ = self.average(isthing)
            out.update({f"{key.upper()}{suffix}": 100 * avg[key] for key in ("pq", "sq", "rq")})
        return out

    def per_class_metrics(self) -> dict[str, dict[str, float]]:
        """PQ, SQ, RQ (percent) per category name, for the categories seen (tp + fp + fn > 0)."""
        _, per_class = self.average(None)
        seen = self.tp + self.fp + self.fn > 0
        return {
            self.names[k]: {key.upper(): 100 * float(per_class[cid][key]) for key in ("pq", "sq", "rq")}
            for k, cid in enumerate(self.category_ids) if seen[k]
        }


def _sum_by(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``keys`` and the sum of ``counts`` over each."""
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=unique.size).astype(np.int64)


def _index_of(segment_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position in ``segment_ids`` (JSON order) of each of ``values``; -1 for void and unlisted ids."""
    out = np.full(values.shape, -1, np.int64)
    if segment_ids.size == 0:
        return out
    order = np.argsort(segment_ids, kind="stable")
    pos = np.minimum(np.searchsorted(segment_ids[order], values), segment_ids.size - 1)
    found = (segment_ids[order][pos] == values) & (values != VOID)
    out[found] = order[pos[found]]
    return out


class _Notes:
    """Ground-truth oddities panopticapi accepts silently; counted and said once."""

    def __init__(self) -> None:
        self.area_mismatch: list[str] = []
        self.not_in_png: list[str] = []

    def log(self, path: Path) -> None:
        for items, what in (
            (self.area_mismatch, "has an 'area' that differs from its pixel count in the PNG"),
            (self.not_in_png, "covers no pixel of its PNG (counted as a false negative)"),
        ):
            if items:
                logger.warning(
                    "%d ground-truth segment(s) of %s %s, as panopticapi does the JSON area is used: %s%s",
                    len(items), path, what, ", ".join(items[:5]), " ..." if len(items) > 5 else "",
                )


def _check_png_ids(
    listed: np.ndarray, present: np.ndarray, png: Path, json_path: Path, image_id: int, results: bool
) -> np.ndarray:
    """Refuse ids in the PNG that the JSON does not list (and, for predictions, the reverse).

    Returns:
        the listed ids absent from the PNG (ground truth only; empty otherwise).
    """
    present = present[present != VOID]
    unlisted = np.setdiff1d(present, listed)
    if unlisted.size:
        raise InputError(
            f"{str(png)!r} (image {image_id}) has segment id(s) {unlisted.tolist()[:10]} in its pixels that are not "
            f"listed in the segments_info of {str(json_path)!r}; the PNG and the JSON do not belong together"
        )
    absent = np.setdiff1d(listed, present)
    if results and absent.size:
        raise InputError(
            f"{str(json_path)!r}: image {image_id} lists segment id(s) {absent.tolist()[:10]} that are not in its PNG "
            f"{str(png)!r} (panopticapi refuses this too); the PNG and the JSON do not belong together"
        )
    return absent


def _image_stat(
    gt: PanopticImage, gt_ids: np.ndarray, pred: PanopticImage, pred_ids: np.ndarray,
    cat_index: Mapping[int, int], num_categories: int, paths: tuple[Path, Path], notes: _Notes,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tp, fp, fn, iou per category (index in ``cat_index``) of one image."""
    gseg, pseg = gt.segments, pred.segments
    # every (gt id, pred id) pair with its pixel count, from one pass over the image
    labels, inter = np.unique(gt_ids.astype(np.int64) * OFFSET + pred_ids, return_counts=True)
    g, p = labels // OFFSET, labels % OFFSET
    gt_present, gt_count = _sum_by(g, inter)
    pred_present, pred_count = _sum_by(p, inter)
    absent = _check_png_ids(gseg.ids, gt_present, gt.png_path, paths[0], gt.image_id, results=False)
    _check_png_ids(pseg.ids, pred_present, pred.png_path, paths[1], pred.image_id, results=True)
    notes.not_in_png += [f"image {gt.image_id} id {i}" for i in absent.tolist()]

    gcat = np.array([cat_index[c] for c in gseg.category_ids.tolist()], dtype=np.int64)
    pcat = np.array([cat_index[c] for c in pseg.category_ids.tolist()], dtype=np.int64)
    garea = gseg.areas
    pidx_present = _index_of(pseg.ids, pred_present)
    parea = np.zeros(pseg.ids.size, np.int64)
    parea[pidx_present[pidx_present >= 0]] = pred_count[pidx_present >= 0]
    gidx_present = _index_of(gseg.ids, gt_present)
    keep = gidx_present >= 0
    differs = garea[gidx_present[keep]] != gt_count[keep]
    notes.area_mismatch += [f"image {gt.image_id} id {i}" for i in gt_present[keep][differs].tolist()]

    gi, pi = _index_of(gseg.ids, g), _index_of(pseg.ids, p)
    void_of_pred = np.zeros(pseg.ids.size, np.int64)  # each prediction's pixels on ground-truth void
    on_void = (g == VOID) & (pi >= 0)
    void_of_pred[pi[on_void]] = inter[on_void]

    both = (gi >= 0) & (pi >= 0)
    gi, pi, inter = gi[both], pi[both], inter[both]
    same = gcat[gi] == pcat[pi]
    union = parea[pi] + garea[gi] - inter - void_of_pred[pi]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    match = same & ~gseg.iscrowd[gi] & (iou > 0.5)
    tp = np.bincount(gcat[gi[match]], minlength=num_categories)
    iou_sum = np.bincount(gcat[gi[match]], weights=iou[match], minlength=num_categories)
    gt_matched = np.zeros(gseg.ids.size, bool)
    gt_matched[gi[match]] = True
    pred_matched = np.zeros(pseg.ids.size, bool)
    pred_matched[pi[match]] = True

    fn = np.bincount(gcat[~gt_matched & ~gseg.iscrowd], minlength=num_categories)
    # the crowd region of a category is its last crowd segment in JSON order (panopticapi's dict)
    crowd_of_category = {int(gcat[k]): k for k in np.flatnonzero(gseg.iscrowd)}
    chosen = np.zeros(gseg.ids.size, bool)
    chosen[np.fromiter(crowd_of_category.values(), np.int64, len(crowd_of_category))] = True
    in_crowd = same & chosen[gi]
    ignored_pixels = void_of_pred + np.bincount(pi[in_crowd], weights=inter[in_crowd], minlength=pseg.ids.size)
    ignored = ignored_pixels / np.maximum(parea, 1) > 0.5
    fp = np.bincount(pcat[~pred_matched & ~ignored], minlength=num_categories)
    return tp, fp, fn, iou_sum


def _check_pair(gt: PanopticAnnotations, predictions: PanopticAnnotations) -> None:
    """Cross-file checks before any PNG is read: every image predicted, every category known."""
    missing = [i for i in gt.images if i not in predictions.images]
    if missing:
        raise InputError(
            f"{str(predictions.json_path)!r} has no prediction for image id(s) {', '.join(map(str, missing[:10]))} "
            f"of {str(gt.json_path)!r} ({len(missing)} of {len(gt.images)}); panoptic quality needs every image"
        )
    extra = [i for i in predictions.images if i not in gt.images]
    if extra:
        logger.warning("%d prediction(s) in %s are for images not in %s (ignored): %s",
                       len(extra), predictions.json_path, gt.json_path, ", ".join(map(str, extra[:10])))
    for image_id in gt.images:
        pred = predictions.images[image_id]
        unknown = sorted(set(pred.segments.category_ids.tolist()) - set(gt.categories))
        if unknown:
            raise InputError(
                f"{str(predictions.json_path)!r}: image {image_id} has category_id {unknown[0]} which is not a "
                f"category of the ground truth {str(gt.json_path)!r}; predictions must use its dataset ids"
            )


def compute_pq(gt: PanopticAnnotations, predictions: PanopticAnnotations, *, progress: bool = False) -> PQStat:
    """Match predictions to ground truth image by image and count, as panopticapi's ``pq_compute``.

    Args:
        gt: from :func:`read_panoptic_gt`.
        predictions: from :func:`read_panoptic_results`; one per ground-truth image.
        progress: show a progress bar.

    Returns:
        the per-category counts; :meth:`PQStat.summary` gives panopticapi's result dict,
        :meth:`PQStat.metrics` detectron2's.

    Raises:
        InputError: an image without prediction, an unknown category, a PNG of the wrong size or
            whose ids disagree with its JSON.
    """
    from tqdm import tqdm

    _check_pair(gt, predictions)
    cat_index = {cid: k for k, cid in enumerate(gt.categories)}
    stat = PQStat.zeros(gt.categories)
    notes = _Notes()
    for image_id, gt_image in tqdm(gt.images.items(), total=len(gt.images), unit="img", desc="PQ",
                                   disable=not progress):
        gt_ids = gt.read_ids(image_id)
        pred_ids = predictions.read_ids(image_id, gt_ids.shape, f"the ground truth of image {image_id}")
        tp, fp, fn, iou = _image_stat(gt_image, gt_ids, predictions.images[image_id], pred_ids, cat_index,
                                      len(cat_index), (gt.json_path, predictions.json_path), notes)
        stat.tp += tp
        stat.fp += fp
        stat.fn += fn
        stat.iou += iou
    notes.log(gt.json_path)
    return stat


def format_pq_table(summary: Mapping[str, Any]) -> str:
    """detectron2's panoptic table: PQ, SQ, RQ (percent) and #categories for All, Things, Stuff."""
    rows = [[name, *(100 * summary[name][k] for k in ("pq", "sq", "rq")), summary[name]["n"]] for name, _ in _GROUPS]
    return format_table(["", "PQ", "SQ", "RQ", "#categories"], rows)


def evaluate_panoptic(
    results: str | os.PathLike | PanopticAnnotations,
    gt: str | os.PathLike | PanopticAnnotations,
    gt_root: str | os.PathLike | None = None,
    results_root: str | os.PathLike | None = None,
    *,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Panoptic quality of COCO panoptic predictions, as detectron2's ``COCOPanopticEvaluator``.

    Args:
        results: ``panoptic_results.json`` (or what :func:`read_panoptic_results` returned).
        gt: the ground-truth panoptic JSON (or what :func:`read_panoptic_gt` returned).
        gt_root, results_root: the PNG folders when ``gt`` / ``results`` are paths; default: the
            folder next to each JSON named by its stem.
        progress: show a progress bar.

    Returns:
        ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st"}, "panoptic_seg_per_class":
        {name: {"PQ", "SQ", "RQ"}}}`` in percent (per class: the categories seen). Also logged as tables.
    """
    if not isinstance(gt, PanopticAnnotations):
        gt = read_panoptic_gt(gt, gt_root)
    if not isinstance(results, PanopticAnnotations):
        results = read_panoptic_results(results, results_root)
    stat = compute_pq(gt, results, progress=progress)
    logger.info("Panoptic Evaluation Results:\n%s", format_pq_table(stat.summary()))
    per_class = stat.per_class_metrics()
    if per_class:
        rows = [[name, v["PQ"], v["SQ"], v["RQ"]] for name, v in per_class.items()]
        logger.info("Per-category panoptic quality:\n%s", format_table(["category", "PQ", "SQ", "RQ"], rows))
    return {"panoptic_seg": stat.metrics(), "panoptic_seg_per_class": per_class}
