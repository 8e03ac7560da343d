"""COCO panoptic categories and detectron2's ``coco_panoptic_separated`` class layout.

Panoptic-CenterMask (detectron2's ``PanopticFPN``) predicts two kinds of classes:

* things: the 80 COCO instance classes, contiguous ids 0-79 in the order of
  :data:`~centermask2.data.categories.COCO_CATEGORIES` (dataset ids 1-90);
* stuff: the semantic head's 54 classes, contiguous 0 = ``"things"`` (every thing pixel) and 1-53
  the COCO panoptic stuff categories in ascending dataset id (92-200).

Dataset ids are those of COCO panoptic (``panoptic_val2017.json``): things keep their COCO ids,
stuff has 92..200. The semantic class names drop ``-other`` and ``-merged`` as detectron2's
``builtin_meta`` does (``sky-other-merged`` -> ``sky``), which gives the ``IoU-<name>`` keys of
its ``SemSegEvaluator``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import InputError

__all__ = [
    "COCO_PANOPTIC_CATEGORIES",
    "THINGS_CLASS",
    "IGNORE_LABEL",
    "PanopticCategories",
    "coco_panoptic_separated",
]

#: (dataset id, name, isthing) of the 133 COCO panoptic categories, in dataset-id order
COCO_PANOPTIC_CATEGORIES: tuple[tuple[int, str, bool], ...] = (
    (1, 'person', True),
    (2, 'bicycle', True),
    (3, 'car', True),
    (4, 'motorcycle', True),
    (5, 'airplane', True),
    (6, 'bus', True),
    (7, 'train', True),
    (8, 'truck', True),
    (9, 'boat', True),
    (10, 'traffic light', True),
    (11, 'fire hydrant', True),
    (13, 'stop sign', True),
    (14, 'parking meter', True),
    (15, 'bench', True),
    (16, 'bird', True),
    (17, 'cat', True),
    (18, 'dog', True),
    (19, 'horse', True),
    (20, 'sheep', True),
    (21, 'cow', True),
    (22, 'elephant', True),
    (23, 'bear', True),
    (24, 'zebra', True),
    (25, 'giraffe', True),
    (27, 'backpack', True),
    (28, 'umbrella', True),
    (31, 'handbag', True),
    (32, 'tie', True),
    (33, 'suitcase', True),
    (34, 'frisbee', True),
    (35, 'skis', True),
    (36, 'snowboard', True),
    (37, 'sports ball', True),
    (38, 'kite', True),
    (39, 'baseball bat', True),
    (40, 'baseball glove', True),
    (41, 'skateboard', True),
    (42, 'surfboard', True),
    (43, 'tennis racket', True),
    (44, 'bottle', True),
    (46, 'wine glass', True),
    (47, 'cup', True),
    (48, 'fork', True),
    (49, 'knife', True),
    (50, 'spoon', True),
    (51, 'bowl', True),
    (52, 'banana', True),
    (53, 'apple', True),
    (54, 'sandwich', True),
    (55, 'orange', True),
    (56, 'broccoli', True),
    (57, 'carrot', True),
    (58, 'hot dog', True),
    (59, 'pizza', True),
    (60, 'donut', True),
    (61, 'cake', True),
    (62, 'chair', True),
    (63, 'couch', True),
    (64, 'potted plant', True),
    (65, 'bed', True),
    (67, 'dining table', True),
    (70, 'toilet', True),
    (72, 'tv', True),
    (73, 'laptop', True),
    (74, 'mouse', True),
    (75, 'remote', True),
    (76, 'keyboard', True),
    (77, 'cell phone', True),
    (78, 'microwave', True),
    (79, 'oven', True),
    (80, 'toaster', True),
    (81, 'sink', True),
    (82, 'refrigerator', True),
    (84, 'book', True),
    (85, 'clock', True),
    (86, 'vase', True),
    (87, 'scissors', True),
    (88, 'teddy bear', True),
    (89, 'hair drier', True),
    (90, 'toothbrush', True),
    (92, 'banner', False),
    (93, 'blanket', False),
    (95, 'bridge', False),
    (100, 'cardboard', False),
    (107, 'counter', False),
    (109, 'curtain', False),
    (112, 'door-stuff', False),
    (118, 'floor-wood', False),
    (119, 'flower', False),
    (122, 'fruit', False),
    (125, 'gravel', False),
    (128, 'house', False),
    (130, 'light', False),
    (133, 'mirror-stuff', False),
    (138, 'net', False),
    (141, 'pillow', False),
    (144, 'platform', False),
    (145, 'playingfield', False),
    (147, 'railroad', False),
    (148, 'river', False),
    (149, 'road', False),
    (151, 'roof', False),
    (154, 'sand', False),
    (155, 'sea', False),
    (156, 'shelf', False),
    (159, 'snow', False),
    (161, 'stairs', False),
    (166, 'tent', False),
    (168, 'towel', False),
    (171, 'wall-brick', False),
    (175, 'wall-stone', False),
    (176, 'wall-tile', False),
    (177, 'wall-wood', False),
    (178, 'water-other', False),
    (180, 'window-blind', False),
    (181, 'window-other', False),
    (184, 'tree-merged', False),
    (185, 'fence-merged', False),
    (186, 'ceiling-merged', False),
    (187, 'sky-other-merged', False),
    (188, 'cabinet-merged', False),
    (189, 'table-merged', False),
    (190, 'floor-other-merged', False),
    (191, 'pavement-merged', False),
    (192, 'mountain-merged', False),
    (193, 'grass-merged', False),
    (194, 'dirt-merged', False),
    (195, 'paper-merged', False),
    (196, 'food-other-merged', False),
    (197, 'building-other-merged', False),
    (198, 'rock-merged', False),
    (199, 'wall-other-merged', False),
    (200, 'rug-merged', False),
)

#: name of stuff class 0, which covers every thing pixel in ``coco_panoptic_separated``
THINGS_CLASS = "things"
#: semantic label of unlabelled (void) pixels in ``panoptic_stuff`` ground truth
IGNORE_LABEL = 255


def _semantic_name(name: str) -> str:
    return name.replace("-other", "").replace("-merged", "")


@dataclass(frozen=True)
class PanopticCategories:
    """Contiguous model classes <-> dataset categories of a "separated" panoptic dataset.

    Attributes:
        thing_dataset_ids: dataset id of every contiguous thing class (index = contiguous id).
        stuff_dataset_ids: dataset id of every contiguous stuff class; index 0 is the
            ``"things"`` class, whose dataset id is 0 (it is no panoptic category).
        stuff_classes: semantic class names, index = contiguous stuff id (54 for COCO).
        categories: dataset id -> (name, isthing) of every panoptic category.
        ignore_label: semantic label of void pixels.
    """

    thing_dataset_ids: tuple[int, ...]
    stuff_dataset_ids: tuple[int, ...]
    stuff_classes: tuple[str, ...]
    categories: Mapping[int, tuple[str, bool]] = field(repr=False)
    ignore_label: int = IGNORE_LABEL

    @property
    def num_stuff_classes(self) -> int:
        """Classes of the semantic head (``"things"`` included)."""
        return len(self.stuff_classes)

    def thing_to_dataset_id(self, contiguous: int) -> int:
        """Dataset id of contiguous thing class ``contiguous``.

        Raises:
            InputError: no such thing class.
        """
        return self._lookup(self.thing_dataset_ids, contiguous, "thing", 0)

    def stuff_to_dataset_id(self, contiguous: int) -> int:
        """Dataset id of contiguous stuff class ``contiguous`` (1 .. num_stuff_classes - 1).

        Class 0 (``"things"``) is refused: a panoptic stuff segment is never of that class.

        Raises:
            InputError: no such stuff class, or 0.
        """
        return self._lookup(self.stuff_dataset_ids, contiguous, "stuff", 1)

    @staticmethod
    def _lookup(table: tuple[int, ...], contiguous: int, kind: str, first: int) -> int:
        if isinstance(contiguous, bool) or not isinstance(contiguous, int) or not first <= contiguous < len(table):
            raise InputError(
                f"{kind} class {contiguous!r} is not a contiguous {kind} class id ({first}..{len(table) - 1}); the "
                f"model's number of {kind} classes does not match the dataset's"
            )
        return table[contiguous]

    def stuff_label_of_category(self) -> dict[int, int]:
        """Semantic label of every dataset category: things 0, stuff their contiguous id.

        This is how detectron2's ``prepare_panoptic_fpn.py`` turns panoptic annotations into
        ``panoptic_stuff`` PNGs (void, i.e. no segment, gets :attr:`ignore_label`).
        """
        labels = {cid: 0 for cid, (_, isthing) in self.categories.items() if isthing}
        labels.update({cid: i for i, cid in enumerate(self.stuff_dataset_ids) if i > 0})
        return labels

    def categories_json(self) -> list[dict[str, object]]:
        """The ``categories`` list of a COCO panoptic JSON: ``{"id", "name", "isthing"}``."""
        return [{"id": cid, "name": name, "isthing": int(isthing)} for cid, (name, isthing) in self.categories.items()]


def coco_panoptic_separated() -> PanopticCategories:
    """detectron2's ``coco_2017_*_panoptic_separated`` layout (80 things, 53 + 1 stuff classes)."""
    things = [cid for cid, _, isthing in COCO_PANOPTIC_CATEGORIES if isthing]
    stuff = [(cid, name) for cid, name, isthing in COCO_PANOPTIC_CATEGORIES if not isthing]
    return PanopticCategories(
        thing_dataset_ids=tuple(things),
        stuff_dataset_ids=(0, *(cid for cid, _ in stuff)),
        stuff_classes=(THINGS_CLASS, *(_semantic_name(name) for _, name in stuff)),
        categories={cid: (name, isthing) for cid, name, isthing in COCO_PANOPTIC_CATEGORIES},
    )
