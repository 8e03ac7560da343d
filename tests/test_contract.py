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
