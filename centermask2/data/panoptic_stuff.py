"""Semantic ground truth for Panoptic-CenterMask: ``panoptic_stuff`` PNGs from COCO panoptic annotations.

What detectron2's ``datasets/prepare_panoptic_fpn.py`` writes (e.g. ``coco/panoptic_stuff_val2017/``):
per panoptic PNG an 8-bit PNG of the same name where thing pixels are 0, stuff pixels their
contiguous stuff class 1-53 (:mod:`centermask2.data.panoptic_categories`) and void 255. The
``sem_seg`` metrics of :mod:`centermask2.evaluation.sem_seg` are computed against these files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..fileio import ensure_writable_dir, output_session, path_inside, remove_stale_temp_files
from ..summary import StageSummary
from .panoptic_categories import PanopticCategories, coco_panoptic_separated

__all__ = ["panoptic_to_semantic", "prepare_panoptic_stuff"]

logger = logging.getLogger(__name__)


def panoptic_to_semantic(
    ids: np.ndarray,
    segment_ids: np.ndarray,
    category_ids: np.ndarray,
    label_of_category: Mapping[int, int],
    ignore_label: int = 255,
    *,
    strict: bool = True,
) -> np.ndarray:
    """Semantic labels of a panoptic id map.

    Args:
        ids: integer [H, W] segment ids (0 = void).
        segment_ids, category_ids: [S] each segment's id and dataset category id.
        label_of_category: dataset category id -> semantic label (things 0, stuff 1..).
        ignore_label: label of void pixels.
        strict: refuse ids in ``ids`` that ``segment_ids`` does not list (False: label them
            ``ignore_label``, as detectron2's script does).

    Returns:
        uint8 [H, W].

    Raises:
        InputError: ``strict`` and an unlisted id.
    """
    present, inverse = np.unique(ids, return_inverse=True)
    if strict:
        unlisted = np.setdiff1d(present[present != 0], segment_ids)
        if unlisted.size:
            raise InputError(f"segment id(s) {unlisted.tolist()[:10]} are in the PNG but not listed in its segments_info")
    lut = np.full(present.size, ignore_label, np.uint8)
    labels = np.array([label_of_category[int(c)] for c in category_ids], dtype=np.uint8)
    pos = np.searchsorted(present, segment_ids)
    found = (pos < present.size) & (present[np.minimum(pos, present.size - 1)] == segment_ids)
    lut[pos[found]] = labels[found]
    return lut[inverse.reshape(ids.shape)]


def _finished(path: Path, size: tuple[int, int] | None) -> bool:
    """An output of an earlier run that can be kept: a readable 8-bit PNG of the right size."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.mode == "L" and (size is None or image.size == (size[1], size[0]))
    except (OSError, ValueError):
        return False


@output_session()
def prepare_panoptic_stuff(
    panoptic_json: str | os.PathLike,
    panoptic_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    categories: PanopticCategories | None = None,
    resume: bool = False,
    progress: bool = True,
) -> StageSummary:
    """Write the ``panoptic_stuff`` PNG of every annotation of a COCO panoptic file.

    Args:
        panoptic_json, panoptic_root: the panoptic ground truth (checked as
            :func:`centermask2.evaluation.panoptic.read_panoptic_gt` does).
        output_dir: where ``<file_name>`` PNGs go (written atomically).
        categories: the class layout (default COCO's, as detectron2).
        resume: keep outputs of an earlier run (readable PNGs of the right size) instead of
            writing them again.
        progress: show a progress bar.

    Returns:
        what was done; an image whose PNG is unusable (wrong size, ids its JSON does not list) is
        named in ``failed`` and the others are still written.

    Raises:
        MissingFileError, InputError: the JSON or a PNG is missing, the JSON is malformed, or it
            uses a category the layout does not know.
    """
    from tqdm import tqdm

    from ..evaluation.panoptic import read_panoptic_gt
    from ..evaluation.sem_seg import write_sem_seg_png

    start = time.perf_counter()
    categories = categories or coco_panoptic_separated()
    gt = read_panoptic_gt(panoptic_json, panoptic_root)
    label_of_category = categories.stuff_label_of_category()
    used = {int(c) for im in gt.images.values() for c in im.segments.category_ids}
    unknown = sorted(used - set(label_of_category))
    if unknown:
        raise InputError(
            f"{str(panoptic_json)!r} uses category {unknown[0]}, which is not a COCO panoptic category (things get 0, "
            f"the 53 stuff categories 1-53); this layout cannot label it"
        )
    out = ensure_writable_dir(output_dir, "--output-dir")
    remove_stale_temp_files(out, lambda name: name.endswith(".png"))
    summary = StageSummary()
    for image_id, image in tqdm(gt.images.items(), total=len(gt.images), unit="img", desc="panoptic_stuff",
                                disable=not progress):
        target = path_inside(out, image.file_name, "output file name")
        if resume and target.is_file() and _finished(target, image.size):
            summary.num_resumed += 1
            continue
        try:
            labels = panoptic_to_semantic(gt.read_ids(image_id), image.segments.ids, image.segments.category_ids,
                                          label_of_category, categories.ignore_label)
        except InputError as exc:
            summary.failed.append((image.file_name, str(exc)))
            continue
        write_sem_seg_png(labels, target)
        summary.num_images += 1
    summary.wall_s = time.perf_counter() - start
    return summary
