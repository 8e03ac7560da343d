"""centermask2.offline.layout: bin_info.json and manifest.json are untrusted input."""

import json

import pytest

from centermask2.errors import InputError
from centermask2.offline.layout import BinImage, BinInfo, Manifest, OutputSpec


def _info(tmp_path, **image):
    im = dict(image_id=1, file_name="x.png", stem="x", height=4, width=4, resized_height=4, resized_width=4,
              bin="x.bin", sizes_bin="image_sizes/x.bin")
    im.update(image)
    BinInfo("uint8", [1, 3, 32, 32], "BGR", 800, 1333, images=[BinImage(**im)]).save(tmp_path)
    return tmp_path / "bin_info.json"


def test_round_trip(tmp_path):
    assert BinInfo.load(_info(tmp_path)).images[0].stem == "x"
    assert BinInfo.load(tmp_path).images[0].bin == "x.bin"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("stem", "../x", "stem '../x' is not a plain file name"),
        ("stem", "/abs/x", "not a plain file name"),
        ("bin", "../other/x.bin", "points outside"),
        ("bin", "/etc/passwd", "relative path inside"),
        ("sizes_bin", "../../x.bin", "points outside"),
    ],
)
def test_names_that_leave_the_folder_are_refused(tmp_path, field, value, message):
    path = _info(tmp_path, **{field: value})
    with pytest.raises(InputError, match=message):
        BinInfo.load(path)


def test_repeated_stems_and_wrong_types_are_refused(tmp_path):
    path = _info(tmp_path)
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][0]))
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="more than once"):
        BinInfo.load(path)
    path.write_text(json.dumps({**data, "images": 3}))
    with pytest.raises(InputError, match="not a bin_info.json"):
        BinInfo.load(path)


@pytest.mark.parametrize("change", [{"dtype": "complex128"}, {"dtype": "object"}, {"shape": [1, -5]},
                                    {"shape": "big"}, {"index": -1}])
def test_manifest_values_are_validated(tmp_path, change):
    Manifest([OutputSpec(0, "boxes", "float32", [1, 50, 4])]).save(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["outputs"][0].update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="boxes"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"shape": "1x3x256x256"}, "'shape' must be a list of 4 positive integers \\[1, 3, H, W\\], got '1x3x256x256'"),
    ({"shape": [1, 3, 32]}, "'shape' must be a list of 4"),
    ({"shape": [1, 3, 32, 1e400]}, "Infinity is not a JSON number"),
    ({"shape": [1, 3, 32, 32.0]}, "'shape' must be a list of 4"),
    ({"dtype": "float64"}, "'dtype' must be 'uint8' or 'float32', got 'float64'"),
    ({"input_format": "BRG"}, "'input_format' must be 'BGR' or 'RGB', got 'BRG'"),
    ({"min_size": "800"}, "'min_size' must be an integer, got '800'"),
    ({"version": 2}, "format version 2 is not 1"),
    ({"extra": 1}, "unknown key\\(s\\) 'extra'"),
    ({"image": {"height": "480"}}, "'height' of image 'x' must be an integer, got '480'"),
    ({"image": {"image_id": 1.5}}, "'image_id' of image 'x' must be an integer, got 1.5"),
    ({"image": {"resized_width": 33}}, "'resized_width' of image 'x' must be from 1 to 32, got 33"),
    ({"image": {"bin": 5}}, "must be a relative path inside"),
])
def test_bin_info_values_are_validated(tmp_path, change, message):
    path = _info(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0].update(change.pop("image", {}))
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        BinInfo.load(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"index_base": "0"}, "'index_base' must be 0 or 1, got '0'"),
    ({"index_base": True}, "'index_base' must be 0 or 1, got True"),
    ({"model_digest": "abc"}, "'model_digest' must be a SHA-256 digest"),
    ({"outputs": []}, "'outputs' must be a non-empty list"),
    ({"output": {"shape": [1, 10**20, 4]}}, "output 'boxes' has shape \\[1, 100000000000000000000, 4\\], more than"),
    ({"output": {"index": True}}, "the index of output 'boxes' must be an integer, got True"),
    ({"output": {"name": 7}}, "the name of output entry 0 must be non-empty text"),
    ({"second": {"index": 0, "name": "boxes", "dtype": "float32", "shape": [1]}}, "output name\\(s\\) \\['boxes'\\]"),
])
def test_manifest_types_and_sizes_are_validated(tmp_path, change, message):
    Manifest([OutputSpec(0, "boxes", "float32", [1, 50, 4])]).save(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["outputs"][0].update(change.pop("output", {}))
    if "second" in change:
        data["outputs"].append(change.pop("second"))
    data.update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        Manifest.load(tmp_path)


def test_a_bin_that_is_a_named_pipe_is_an_unusable_item(tmp_path):
    import os

    from centermask2.errors import ItemError
    from centermask2.offline.layout import read_array

    os.mkfifo(tmp_path / "x.bin")
    with pytest.raises(ItemError, match="is not a regular file \\(a named pipe\\)"):
        read_array(tmp_path / "x.bin", "uint8", [1, 3, 4, 4])
