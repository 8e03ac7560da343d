"""centermask2.engine.onnxruntime_backend: an exported model's file is untrusted input."""

import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from centermask2.contract import OUTPUT_NAMES
from centermask2.engine.onnxruntime_backend import PROVIDERS, OnnxRuntimeBackend
from centermask2.errors import BackendError, InputError, MissingFileError
from golden import META


def _model(path, graph_hw=(640, 960), batch=2):
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, 3, *graph_hw])
    sizes = helper.make_tensor_value_info("image_sizes", TensorProto.INT64, [batch, 2])
    nodes, outputs = [], []
    for name in OUTPUT_NAMES:  # any graph with the right names will do
        nodes.append(helper.make_node("Identity", ["image_sizes"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, [batch, 2]))
    model = helper.make_model(helper.make_graph(nodes, "g", [images, sizes], outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in META.to_props().items():  # static 640x960, batch 2
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def test_metadata_that_contradicts_the_graph_is_refused(tmp_path):
    OnnxRuntimeBackend(_model(tmp_path / "ok.onnx"))
    with pytest.raises(InputError, match=r"metadata says input \[2, 3, 640, 960\] but the graph takes \[2, 3, 1344, 1344\]"):
        OnnxRuntimeBackend(_model(tmp_path / "bad.onnx", graph_hw=(1344, 1344)))


def test_files_that_are_not_models(tmp_path):
    with pytest.raises(MissingFileError, match="ONNX model not found: .*none.onnx"):
        OnnxRuntimeBackend(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.onnx"):
        OnnxRuntimeBackend(tmp_path / "junk.onnx")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_provider_runs_where_available_and_is_named_where_not(tmp_path, provider):
    """What this machine's ONNX Runtime offers decides: an available provider opens the model (on it,
    or the ones after it in ``PROVIDERS``), a missing one is a clear error naming what is there."""
    wanted = PROVIDERS[provider]
    available = onnxruntime.get_available_providers()
    model = _model(tmp_path / "ok.onnx")
    if wanted[0] in available:
        used = OnnxRuntimeBackend(model, provider=provider).session.get_providers()
        assert used and set(used) <= set(wanted), used
    else:
        with pytest.raises(BackendError, match=rf"{wanted[0]}' is not available here \(available: {available[0]}"):
            OnnxRuntimeBackend(model, provider=provider)


def test_missing_provider_is_named(tmp_path, monkeypatch):
    """The error path on every machine: ONNX Runtime offering only the CPU."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    for provider in ("cuda", "tensorrt"):
        with pytest.raises(BackendError, match="not available here .*available: CPUExecutionProvider.*onnxruntime-gpu"):
            OnnxRuntimeBackend(_model(tmp_path / "ok.onnx"), provider=provider)
