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
