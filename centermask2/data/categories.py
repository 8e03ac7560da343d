"""Classes: contiguous model class <-> dataset category id and name.

The model predicts contiguous classes 0..C-1. Which dataset category each one is comes from an
annotation file (sorted category ids, as detectron2's ``load_coco_json``), from an exported
model's metadata, or, for 80-class models without either, from COCO 2017
(:data:`COCO_CATEGORIES`, the classes of the official checkpoints).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from ..fileio import read_json

__all__ = [
    "COCO_CATEGORIES",
    "coco_contiguous_to_dataset_id",
    "coco_class_names",
    "load_coco_dict",
    "load_coco_categories",
    "category_mapping",
]

COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, 'person'),
    (2, 'bicycle'),
    (3, 'car'),
    (4, 'motorcycle'),
    (5, 'airplane'),
    (6, 'bus'),
    (7, 'train'),
    (8, 'truck'),
    (9, 'boat'),
    (10, 'traffic light'),
    (11, 'fire hydrant'),
    (13, 'stop sign'),
    (14, 'parking meter'),
    (15, 'bench'),
    (16, 'bird'),
    (17, 'cat'),
    (18, 'dog'),
    (19, 'horse'),
    (20, 'sheep'),
    (21, 'cow'),
    (22, 'elephant'),
    (23, 'bear'),
    (24, 'zebra'),
    (25, 'giraffe'),
    (27, 'backpack'),
    (28, 'umbrella'),
    (31, 'handbag'),
    (32, 'tie'),
    (33, 'suitcase'),
    (34, 'frisbee'),
    (35, 'skis'),
    (36, 'snowboard'),
    (37, 'sports ball'),
    (38, 'kite'),
    (39, 'baseball bat'),
    (40, 'baseball glove'),
    (41, 'skateboard'),
    (42, 'surfboard'),
    (43, 'tennis racket'),
    (44, 'bottle'),
    (46, 'wine glass'),
    (47, 'cup'),
    (48, 'fork'),
    (49, 'knife'),
    (50, 'spoon'),
    (51, 'bowl'),
    (52, 'banana'),
    (53, 'apple'),
    (54, 'sandwich'),
    (55, 'orange'),
    (56, 'broccoli'),
    (57, 'carrot'),
    (58, 'hot dog'),
    (59, 'pizza'),
    (60, 'donut'),
    (61, 'cake'),
    (62, 'chair'),
    (63, 'couch'),
    (64, 'potted plant'),
    (65, 'bed'),
    (67, 'dining table'),
    (70, 'toilet'),
    (72, 'tv'),
    (73, 'laptop'),
    (74, 'mouse'),
    (75, 'remote'),
    (76, 'keyboard'),
    (77, 'cell phone'),
    (78, 'microwave'),
    (79, 'oven'),
    (80, 'toaster'),
    (81, 'sink'),
    (82, 'refrigerator'),
    (84, 'book'),
    (85, 'clock'),
    (86, 'vase'),
    (87, 'scissors'),
    (88, 'teddy bear'),
    (89, 'hair drier'),
    (90, 'toothbrush'),
)


def coco_contiguous_to_dataset_id() -> list[int]:
    """Dataset category id of every contiguous class (index = contiguous id)."""
    return [cid for cid, _ in COCO_CATEGORIES]


def coco_class_names() -> list[str]:
    """Class names in contiguous order."""
    return [name for _, name in COCO_CATEGORIES]


def load_coco_dict(coco_json: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The COCO annotation dict from a path or an already loaded dict.

    Raises:
        MissingFileError: no such file.
        InputError: not JSON, or not an object with ``images`` and ``categories``.
    """
    if isinstance(coco_json, Mapping):
        return dict(coco_json)
    path = os.fspath(coco_json)
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise InputError(
            f"{path!r} is not a COCO annotation file (expected a JSON object with 'images' and 'categories')."
        )
    return data


def load_coco_categories(coco_json: str | os.PathLike | Mapping[str, Any]) -> tuple[list[int], list[str]]:
    """Contiguous class order of a COCO dataset, as detectron2's ``load_coco_json``.

    Category ids are sorted ascending; contiguous id ``i`` is the i-th of them.

    Args:
        coco_json: path of a COCO annotation JSON, or its loaded dict.

    Returns:
        (contiguous_to_dataset_id, class_names), both indexed by contiguous id.
    """
    data = load_coco_dict(coco_json)
    source = "the COCO annotation file" if isinstance(coco_json, Mapping) else repr(os.fspath(coco_json))
    try:
        bad = [c["id"] for c in data["categories"] if type(c["id"]) is not int]
        if bad:  # 1.5 would silently become category 1
            raise InputError(f"{source}: category id {bad[0]!r:.40} is not an integer; COCO category ids are integers")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        ids, names = [c["id"] for c in cats], [str(c["name"]) for c in cats]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{source}: its 'categories' are malformed ({type(exc).__name__}: {exc})") from None
    if not cats:
        raise InputError(f"{source} has no categories.")
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:  # two classes would map to one dataset id: one class's detections scored as the other's
        raise InputError(f"{source} lists category id(s) {repeated[:10]} more than once; every category needs its own "
                         "id (fix 'categories')")
    return ids, names


def category_mapping(coco_json: str | os.PathLike | None, num_classes: int) -> tuple[list[int], list[str]]:
    """Contiguous class -> dataset category id, and class names.

    From the annotation file when given (sorted category ids, as detectron2), else the 80 COCO
    categories for 80-class models, else identity ids with names ``class_<i>``.

    Raises:
        InputError: the annotation file's category count differs from ``num_classes``.
    """
    if coco_json is not None:
        ids, names = load_coco_categories(coco_json)
        if len(ids) != num_classes:
            raise InputError(
                f"{os.fspath(coco_json)!r} has {len(ids)} categories but the model predicts {num_classes} classes"
            )
        return ids, names
    if num_classes == 80:
        return coco_contiguous_to_dataset_id(), coco_class_names()
    return list(range(num_classes)), [f"class_{i}" for i in range(num_classes)]
