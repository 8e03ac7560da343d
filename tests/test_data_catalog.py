"""centermask2.data.catalog: which images a run sees, with named errors."""

import json

import pytest
from PIL import Image

from centermask2.data.catalog import list_images, resolve_dataset
from centermask2.errors import InputError, MissingFileError


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 3)).save(folder / name)
    return folder


def test_folder_listing_ids(tmp_path):
    numeric = _images(tmp_path / "a", ["000000000139.jpg", "000000000002.png"])
    (numeric / "notes.txt").write_text("not an image")
    assert [(r.image_id, r.file_name) for r in list_images(numeric)] == [(2, "000000000002.png"), (139, "000000000139.jpg")]
    named = _images(tmp_path / "b", ["cat.png", "0001.png"])
    assert [(r.image_id, r.file_name) for r in list_images(named)] == [(1, "0001.png"), (2, "cat.png")]


def test_annotation_order_and_missing_images(tmp_path):
    folder = _images(tmp_path / "imgs", ["x.png", "y.png"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "y.png"}, {"id": 3, "file_name": "x.png"}]}))
    assert [(r.image_id, r.file_name) for r in list_images(folder, ann)] == [(7, "y.png"), (3, "x.png")]
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "z.png"}]}))
    with pytest.raises(MissingFileError, match=r"1 image\(s\) listed in .*ann.json.* z.png"):
        list_images(folder, ann)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{", "not a valid COCO annotation file"),
        ("[]", "expected a JSON dict"),
        ('{"images": 3}', "no 'images' list"),
        ('{"images": [{"file_name": "x.png"}]}', "numeric 'id'"),
        ('{"images": [{"id": "seven", "file_name": "x.png"}]}', "numeric 'id'"),
    ],
)
def test_malformed_annotation_files_are_named(tmp_path, content, message):
    folder = _images(tmp_path / "imgs", ["x.png"])
    (tmp_path / "ann.json").write_text(content)
    with pytest.raises(InputError, match=message):
        list_images(folder, tmp_path / "ann.json")


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(MissingFileError, match="images folder not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="no images"):
        list_images(tmp_path / "empty")


def test_registered_datasets(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        resolve_dataset("coco_2099")
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text("{}")
    images, ann = resolve_dataset("coco_2017_val", tmp_path)
    assert images.endswith("coco/val2017") and ann.endswith("instances_val2017.json")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.png"])
def test_file_names_outside_the_folder_are_refused_unopened(tmp_path, name):
    folder = _images(tmp_path / "imgs", ["x.png"])
    (tmp_path / "ann.json").write_text(json.dumps({"images": [{"id": 1, "file_name": name}]}))
    with pytest.raises(InputError, match="file_name"):
        list_images(folder, tmp_path / "ann.json")


@pytest.mark.parametrize(
    "images,message",
    [
        ([{"id": 1, "file_name": "x.png"}, {"id": 1, "file_name": "y.png"}], "image id.* 1 more than once"),
        ([{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "x.png"}], "file_name.* x.png more than once"),
    ],
)
def test_duplicate_ids_or_file_names_are_refused(tmp_path, images, message):
    folder = _images(tmp_path / "imgs", ["x.png", "y.png"])
    (tmp_path / "ann.json").write_text(json.dumps({"images": images}))
    with pytest.raises(InputError, match=message):
        list_images(folder, tmp_path / "ann.json")
