"""centermask2.contract: the model's I/O contract and metadata, readable without torch."""

import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from centermask2.contract import (
    OUTPUT_NAMES,
    ModelMetadata,
    default_output_specs,
    model_output_specs,
    read_metadata,
)
from centermask2.errors import InputError, MissingFileError
from golden import META


def _model(path, props, output_dims=(None, 50, 4)):
    out = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, list(output_dims))
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 50, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["boxes"])], "g", [inp], [out])
    model = helper.make_model(graph)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def test_metadata_round_trip(tmp_path):
    path = _model(tmp_path / "m.onnx", META.to_props())
    assert read_metadata(path) == META
    dynamic = ModelMetadata(**{**META.__dict__, "dynamic": True, "input_size": None, "batch_size": None})
    assert ModelMetadata.from_props(dynamic.to_props()) == dynamic


@pytest.mark.parametrize("drop,message", [("centermask2.output_names", "no centermask2 metadata"),
                                          ("centermask2.min_size_test", "min_size_test' is missing")])
def test_missing_metadata_is_named(tmp_path, drop, message):
    props = {k: v for k, v in META.to_props().items() if k != drop}
    with pytest.raises(InputError, match=message):
        read_metadata(_model(tmp_path / "m.onnx", props))


def test_malformed_metadata_is_named(tmp_path):
    props = {**META.to_props(), "centermask2.max_detections": "many"}
    with pytest.raises(InputError, match="max_detections.*malformed"):
        read_metadata(_model(tmp_path / "m.onnx", props))


def test_not_a_model(tmp_path):
    with pytest.raises(MissingFileError, match="nope.onnx"):
        read_metadata(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not protobuf at all")
    with pytest.raises(InputError, match="junk.onnx"):
        read_metadata(tmp_path / "junk.onnx")


def test_output_specs_from_graph_or_defaults(tmp_path):
    static = model_output_specs(_model(tmp_path / "s.onnx", META.to_props(), (1, 50, 4)))
    assert [(s.name, s.dtype, s.shape) for s in static] == [("boxes", "float32", [1, 50, 4])]
    dynamic = model_output_specs(_model(tmp_path / "d.onnx", META.to_props(), (None, None, 4)))
    assert dynamic[0].shape == default_output_specs(50)[0].shape == [1, 50, 4]
    assert [s.name for s in default_output_specs(50)] == list(OUTPUT_NAMES)
    assert default_output_specs(50)[3].nbytes == 50 * 28 * 28 * 4


@pytest.mark.parametrize(
    "module",
    ["centermask2.contract", "centermask2.engine.onnxruntime_backend", "centermask2.offline.run",
     "centermask2.offline.preprocess", "centermask2.offline.layout", "centermask2.data"],
)
def test_runtime_modules_do_not_import_torch(module):
    """Reading a model's contract, running ONNX Runtime and the offline stages 1-2 need neither torch
    nor the exporter (importing them costs seconds)."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'centermask2.export', 'centermask2.modeling') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_padding_mode_round_trips_and_defaults_to_include_for_old_models():
    ignore = ModelMetadata(**{**META.__dict__, "padding": "ignore"})
    assert ModelMetadata.from_props(ignore.to_props()).padding == "ignore"
    old = {k: v for k, v in ignore.to_props().items() if k != "centermask2.padding"}
    assert ModelMetadata.from_props(old).padding == "include"
    with pytest.raises(InputError, match="padding.*malformed.*ignore, include"):
        ModelMetadata.from_props({**ignore.to_props(), "centermask2.padding": "maybe"})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("input_size", "640x960x3", "input_size' = '640x960x3' is malformed \\(expected HxW"),
    ("input_size", "", "input_size' = '' is malformed \\(expected HxW"),
    ("input_size", "1e3x960", "malformed"),
    ("category_ids", '["3", "7"]', "category_ids' = '\\[\"3\", \"7\"\\]' is malformed \\(expected a list of integers"),
    ("category_ids", "[3.5, 7]", "expected a list of integers"),
    ("category_ids", "[3]", "2 class names and 1 category ids"),
    ("class_names", "[1, 2]", "expected a JSON list of names"),
    ("pixel_mean", "[1, 2, NaN]", "NaN is not a JSON number"),
    ("pixel_mean", "[1, 2, 1e999]", "three finite numbers"),
    ("pixel_mean", "[1, 2]", "three finite numbers"),
    ("pixel_std", "[1, 0, 1]", "three finite numbers > 0"),
    ("input_mode", "sideways", "expected static or dynamic"),
    ("input_format", "BRG", "expected BGR or RGB"),
    ("input_dtype", "int8", "expected uint8 or float32"),
    ("min_size_test", "-800", "expected an integer from 0"),
    ("max_size_test", " 1333", "expected an integer from 1"),
    ("batch_size", "0", "expected an integer from 1 to 1024"),
    ("max_detections", "1000000000", "expected an integer from 1 to 100000"),
    ("output_names", '"boxes"', "expected a JSON list of names"),
    ("output_names", "[" * 200 + "]" * 200, "nested more than 100 levels deep"),
])
def test_metadata_of_the_wrong_type_or_range_is_named(key, value, message):
    with pytest.raises(InputError, match=message):
        ModelMetadata.from_props({**META.to_props(), f"centermask2.{key}": value}, "'m.onnx'")


def test_a_model_that_is_a_named_pipe_is_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="is not a regular file \\(a named pipe\\)"):
        read_metadata(tmp_path / "m.onnx")


# ---- model outputs, validated once for every path -------------------------------------------------------------


def _image_outputs(n=2, k=4, **change):
    import numpy as np

    boxes = np.zeros((k, 4), np.float32)
    boxes[:2] = [[1, 1, 10, 10], [2, 3, 20, 15]]
    out = {
        "boxes": boxes,
        "scores": np.array([0.9, 0.8, 0, 0], np.float32)[:k],
        "classes": np.array([3, 5, 0, 0], np.int64)[:k],
        "masks": np.ones((k, 28, 28), np.float32),
        "mask_scores": np.array([0.7, 0.6, 0, 0], np.float32)[:k],
        "num_detections": np.array(n, np.int64),
    }
    for name, (index, value) in change.items():
        out[name][index] = value
    return out


def test_valid_outputs_give_their_count():
    import numpy as np

    from centermask2.contract import check_detections

    assert check_detections(_image_outputs(), num_classes=80) == 2
    assert check_detections(_image_outputs(n=0), num_classes=80) == 0
    out = _image_outputs()
    out["scores"][3] = np.nan  # rows past num_detections may hold anything
    out["masks"][2:] = np.nan
    out["classes"][3] = -7
    assert check_detections(out, num_classes=80) == 2
    out["sem_seg"] = np.zeros((54, 8, 8), np.float32)
    assert check_detections({k: v for k, v in out.items() if k not in ("masks", "mask_scores")}) == 2


@pytest.mark.parametrize(
    "change,message",
    [
        ({"num_detections": ((), -1)}, "num_detections is -1, outside [0, 4]"),
        ({"num_detections": ((), 5)}, "num_detections is 5, outside [0, 4]"),
        ({"boxes": ((1, 2), float("nan"))}, "boxes of the first 2 detection(s) hold NaN or infinite values"),
        ({"scores": ((0,), float("inf"))}, "scores of the first 2 detection(s) hold NaN or infinite values"),
        ({"masks": ((1,), float("nan"))}, "masks of the first 2 detection(s) hold NaN or infinite values"),
        ({"mask_scores": ((1,), float("-inf"))}, "mask_scores of the first 2 detection(s) hold NaN or infinite values"),
        ({"classes": ((1,), 80)}, "classes must be in [0, 80), got 80"),
        ({"classes": ((0,), -1)}, "classes must be in [0, 80), got -1"),
    ],
)
def test_corrupt_outputs_are_refused_by_name(change, message):
    import re

    from centermask2.contract import check_detections
    from centermask2.errors import BackendError, ItemError

    with pytest.raises(BackendError, match=re.escape(f"image 7: {message}; fix it")):
        check_detections(_image_outputs(**change), num_classes=80, where="image 7", hint="fix it")
    with pytest.raises(ItemError, match=re.escape(message)):
        check_detections(_image_outputs(**change), num_classes=80, error=ItemError)


def test_malformed_outputs_are_refused_by_name():
    import numpy as np

    from centermask2.contract import check_detections
    from centermask2.errors import BackendError

    out = _image_outputs()
    out["num_detections"] = np.array(1.5)
    with pytest.raises(BackendError, match="num_detections is 1.5, not a count"):
        check_detections(out)
    out = _image_outputs()
    out["scores"] = out["scores"][:3]
    with pytest.raises(BackendError, match=r"scores has shape \(3,\), expected \(4,\)"):
        check_detections(out)
    out = _image_outputs()
    del out["classes"]
    with pytest.raises(BackendError, match="no 'classes' output"):
        check_detections(out)
    out = _image_outputs()
    out["classes"] = out["classes"].astype(np.float32)
    out["classes"][0] = 2.5
    with pytest.raises(BackendError, match="classes must be whole numbers"):
        check_detections(out)
    out = _image_outputs()
    out["sem_seg"] = np.full((54, 8, 8), np.nan, np.float32)
    with pytest.raises(BackendError, match="sem_seg holds NaN or infinite values"):
        check_detections(out)
