"""Training data pipeline against upstream's recorded batches (tests/data/train_golden)."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from centermask2.data.training import (
    AugmentSettings,
    TrainingBatches,
    collate_training_batch,
    load_training_annotations,
    map_training_image,
    rle_to_polygons,
)
from centermask2.errors import InputError
from golden import CASES, TRAIN_CASES, TRAIN_DATA, golden_batch, train_case


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_mapped_images_and_targets_match_upstream(case):
    info = train_case(case)
    images, _, _ = load_training_annotations(TRAIN_DATA / case / "annotations_train.json",
                                             CASES[info["source_golden_case"]] / "images")
    by_name = {im.path.name: im for im in images}
    want_images, want_targets = golden_batch(case)
    settings = AugmentSettings(min_sizes=(640,), max_size=1333)
    for rec, want_im, want in zip(info["data"]["images"], want_images, want_targets):
        im, target = map_training_image(by_name[rec["file_name"]], settings, np.random.default_rng(0),
                                        flip=rec["hflip"])
        assert np.array_equal(im, want_im)
        assert np.array_equal(target["boxes"].numpy(), want["boxes"].numpy())
        assert np.array_equal(target["classes"].numpy(), want["classes"].numpy())
        assert len(target["polygons"]) == len(want["polygons"])
        for got_p, want_p in zip(target["polygons"], want["polygons"]):
            assert len(got_p) == len(want_p)
            for a, b in zip(got_p, want_p):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_rle_becomes_polygons_of_the_same_mask():
    """Each 8-connected piece is traced (holes filled); rasterized back it is the mask within the
    tracing's 1/8-pixel offset, which pycocotools rounds to the same pixels."""
    mask = np.zeros((40, 50), dtype=np.uint8, order="F")
    mask[5:20, 5:25] = 1
    mask[25:35, 30:45] = 1
    mask[35, 45] = 1  # touches the second piece diagonally: same 8-connected piece
    polys = rle_to_polygons(mask_util.encode(mask), 40, 50)
    assert len(polys) == 2
    back = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, 40, 50)))
    assert (back != mask).sum() <= 4  # the diagonal joint only


def test_crowd_and_unusable_annotations_are_dropped(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "categories": [{"id": 7, "name": "x"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "iscrowd": 1,
             "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5]]},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5, 1, 5, 5]]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    images, ids, names = load_training_annotations(tmp_path / "ann.json", tmp_path)
    assert ids == [7] and names == ["x"] and len(images[0].instances) == 1
    ann["annotations"][2]["category_id"] = 8
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(InputError, match="unknown image or category"):
        load_training_annotations(tmp_path / "ann.json", tmp_path)
    ann["images"][0]["file_name"] = "../a.png"
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(InputError, match="file_name '../a.png' points outside"):
        load_training_annotations(tmp_path / "ann.json", tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"image": {"id": 1.5}}, "1.5 is not an integer"),
    ({"image": {"height": "10"}}, "'10' is not an integer"),
    ({"annotation": {"image_id": 1.0}}, "1.0 is not an integer"),
    ({"annotation": {"bbox": [1, 1, 12345.5, 4]}}, "inf is not a finite number"),  # written 1e999 below
])
def test_fractional_ids_and_infinite_boxes_are_named(tmp_path, change, message):
    """Ids must be integers (1.5 would silently become image 1) and boxes finite."""
    image = {"id": 1, "file_name": "a.png", "height": 10, "width": 10, **change.get("image", {})}
    annotation = {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4],
                  "segmentation": [[1, 1, 5, 1, 5, 5]], **change.get("annotation", {})}
    text = json.dumps({"images": [image], "categories": [{"id": 7, "name": "x"}], "annotations": [annotation]})
    (tmp_path / "ann.json").write_text(text.replace("12345.5", "1e999"))  # reads as infinity
    with pytest.raises(InputError, match=message):
        load_training_annotations(tmp_path / "ann.json", tmp_path)


def test_batches_are_a_function_of_seed_and_iteration():
    info = train_case("lite_V_19_slim_dw")
    images, _, _ = load_training_annotations(TRAIN_DATA / "lite_V_19_slim_dw" / "annotations_train.json",
                                             CASES[info["source_golden_case"]] / "images")
    settings = AugmentSettings(min_sizes=(96, 128), max_size=200)
    a = TrainingBatches(images, settings, 3, seed=5)
    b = TrainingBatches(images, settings, 3, seed=5)
    for it in (4, 0, 4):
        x, y = a[it], b[it]
        assert [im.shape for im, _ in x] == [im.shape for im, _ in y]
        assert all(np.array_equal(p, q) for (p, _), (q, _) in zip(x, y))
    # every image once per epoch
    assert sorted(a.indices(0) + a.indices(1)[:1]) == [0, 0, 1, 1]  # 2 images, 3 per batch
    raw, sizes, targets = collate_training_batch(a[1], 32)
    assert raw.shape[2] % 32 == 0 and raw.shape[3] % 32 == 0 and len(targets) == 3
    assert all(raw[i, :, int(h):].sum() == 0 for i, (h, _) in enumerate(sizes.tolist()))
