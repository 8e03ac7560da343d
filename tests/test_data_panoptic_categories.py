"""COCO panoptic categories and detectron2's coco_panoptic_separated class layout."""

import json

import pytest

from centermask2.data.categories import COCO_CATEGORIES
from centermask2.data.panoptic_categories import COCO_PANOPTIC_CATEGORIES, coco_panoptic_separated
from centermask2.errors import InputError
from golden import PANOPTIC


def test_layout_matches_detectron2():
    meta = coco_panoptic_separated()
    assert len(COCO_PANOPTIC_CATEGORIES) == 133
    assert meta.thing_dataset_ids == tuple(cid for cid, _ in COCO_CATEGORIES)  # the 80 instance classes, same order
    assert meta.stuff_dataset_ids[:3] == (0, 92, 93) and meta.stuff_dataset_ids[-1] == 200
    assert len(meta.stuff_classes) == meta.num_stuff_classes == 54
    # the semantic names and order are those of detectron2's SemSegEvaluator keys
    golden = json.loads((PANOPTIC / "metrics_gt.json").read_text())["sem_seg"]
    assert [k[len("IoU-"):] for k in golden if k.startswith("IoU-")] == list(meta.stuff_classes)
    gt = json.loads((PANOPTIC / "annotations_panoptic_gt.json").read_text())["categories"]
    assert [(c["id"], c["name"], bool(c["isthing"])) for c in gt] == list(COCO_PANOPTIC_CATEGORIES)
    assert [{k: c[k] for k in ("id", "name", "isthing")} for c in gt] == meta.categories_json()


def test_semantic_labels_of_categories():
    labels = coco_panoptic_separated().stuff_label_of_category()
    assert len(labels) == 133 and labels[1] == labels[90] == 0
    assert labels[92] == 1 and labels[187] == 40 and labels[200] == 53


def test_lookups_refuse_unknown_classes():
    meta = coco_panoptic_separated()
    assert meta.thing_to_dataset_id(0) == 1 and meta.stuff_to_dataset_id(53) == 200
    for bad in (-1, 80, True, 1.0):
        with pytest.raises(InputError, match="thing class"):
            meta.thing_to_dataset_id(bad)
    with pytest.raises(InputError, match=r"stuff class 0 .* \(1\.\.53\)"):
        meta.stuff_to_dataset_id(0)
