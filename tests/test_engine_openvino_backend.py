"""The same exported .onnx in OpenVINO: golden parity (image mode and --bins, dynamic and static
models), flag checks and the missing-extra error."""

import importlib.util
import sys

import numpy as np
import pytest

from centermask2.cli import tester
from centermask2.errors import InputError, MissingDependencyError
from golden import CASES, LITE, check_golden_folder, postprocess_golden, preprocess_bins, script_model


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Compiled models go to the test's folder, not ~/.cache."""
    monkeypatch.setenv("CENTERMASK2_CACHE", str(tmp_path / "cache"))


def test_missing_openvino_is_a_clear_error(monkeypatch, tmp_path):
    from centermask2.engine.openvino_backend import OpenVINOBackend

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[openvino\]"'):
        OpenVINOBackend(tmp_path / "model.onnx")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "onnx", "--device", "GPU"], "--device is for --backend openvino"),
        (["--backend", "onnx", "--precision", "bf16"], "--precision is for --backend openvino"),
        (["--backend", "onnx", "--requests", "2"], "--requests is for --backend openvino"),
        (["--backend", "openvino"], "--backend openvino needs --model"),
    ],
)
def test_runtime_flags_are_checked(tmp_path, caplog, extra, message):
    case = CASES[LITE]
    model = [] if extra[-1] == "openvino" else ["--model", str(tmp_path / "m.onnx")]
    argv = [*extra, *model, "--images", str(case / "images"), "--output-dir", str(tmp_path / "out")]
    assert tester.main(argv) == 2
    assert message in caplog.text


def test_bad_device_and_precision_are_named(lite_dynamic):
    from centermask2.engine.openvino_backend import OpenVINOBackend

    model = lite_dynamic
    with pytest.raises(InputError, match="device must be one of"):
        OpenVINOBackend(model, device="TPU")
    with pytest.raises(InputError, match="precision must be one of"):
        OpenVINOBackend(model, precision="int4")
    with pytest.raises(InputError, match=r"--requests must be from 0 \(OpenVINO's choice\) to 64, got 65"):
        OpenVINOBackend(model, requests=65)


def test_several_infer_requests_give_the_same_results(tmp_path, lite_dynamic):
    """OpenVINO's throughput mode (--requests 2: two images in flight, each call on its own infer
    request) writes the results of its latency mode, byte for byte."""
    case = CASES[LITE]
    results = {}
    for requests in ("1", "2"):
        out = tmp_path / requests
        assert tester.main(["--backend", "openvino", "--model", str(lite_dynamic), "--images", str(case / "images"),
                            "--output-dir", str(out), "--requests", requests, "--threads", "2", "--no-progress"]) == 0
        results[requests] = (out / "coco_instances_results.json").read_bytes()
    assert results["1"] == results["2"]


def test_calls_from_many_threads_at_once(lite_dynamic):
    """Two infer requests, eight threads calling at once with images of changing sizes (each call
    may reshape its request's inputs): every call returns, with the outputs the same image gets
    alone. (The handover lock in the backend was added after a 20-image folder deadlocked with
    --requests 2; these small images do not reproduce that deadlock without it.)"""
    import threading
    import time

    from centermask2.engine.openvino_backend import OpenVINOBackend

    backend = OpenVINOBackend(lite_dynamic, threads=2, cache_dir="", requests=2)
    rng = np.random.default_rng(0)
    sizes = [(128, 128), (160, 192), (192, 128)]
    feeds = [{"images": rng.integers(0, 256, (1, 3, *sizes[i % 3]), dtype=np.uint8),
              "image_sizes": np.array([sizes[i % 3]], dtype=np.int64)} for i in range(24)]
    expected = [backend.run(feed) for feed in feeds]  # one call at a time
    got: dict[int, dict] = {}

    def call(i: int) -> None:
        got[i] = backend.run(feeds[i])

    for start in range(0, len(feeds), 8):
        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(start, start + 8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0.0))
        assert not any(t.is_alive() for t in threads), "calls from several threads at once never returned"
    assert sorted(got) == list(range(len(feeds)))
    for i, out in got.items():
        assert all(np.array_equal(out[k], expected[i][k]) for k in expected[i]), i


def test_per_layer_counters(lite_static, capsys):
    """perf_count=True: OpenVINO's counters of the last call, which tools/profile_openvino.py groups."""
    from centermask2.engine.openvino_backend import OpenVINOBackend
    from centermask2.errors import BackendError
    from golden import ROOT

    backend = OpenVINOBackend(lite_static, threads=2, cache_dir="", perf_count=True)
    with pytest.raises(BackendError, match="no call has run yet"):
        backend.profiling_info()
    backend.run({"images": np.zeros((1, 3, 1344, 1344), np.uint8), "image_sizes": np.array([[600, 900]])})
    infos = backend.profiling_info()
    assert any(i.node_type == "Convolution" and i.real_time.total_seconds() > 0 for i in infos)

    spec = importlib.util.spec_from_file_location("profile_openvino", ROOT / "tools" / "profile_openvino.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(lite_static), "--by", "type", "--runs", "1", "--warmup", "0", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Convolution" in printed and "layer type" in printed


def test_dynamic_model_matches_upstream(tmp_path, lite_dynamic):
    """Image mode, batches of 2 images of different sizes, against upstream's default padding."""
    case = CASES[LITE]
    model = lite_dynamic
    out = tmp_path / "out"
    assert tester.main(["--backend", "openvino", "--model", str(model), "--images", str(case / "images"),
                        "--coco-json", str(case / "annotations_gt.json"), "--output-dir", str(out),
                        "--batch-size", "2", "--threads", "2", "--no-progress"]) == 0
    check_golden_folder(out, LITE)


@pytest.mark.parametrize("name,form", [(LITE, None), pytest.param("V_39", "static-float32", marks=pytest.mark.slow),
                                       pytest.param("V_39_dcn", "static-uint8", marks=pytest.mark.slow)])
def test_static_model_bins_match_upstream(tmp_path, request, script_export, name, form):
    """The .bin pipeline with OpenVINO as the engine (static 1344x1344 models: Lite and V-39-DCN
    uint8, V-39 float32; V-39-DCN's deformable convolutions as ONNX DeformConv, read by OpenVINO's
    own frontend). The V-39 files are the ones convert_model_into_onnx.py wrote in its own test."""
    case = CASES[name]
    model = request.getfixturevalue("lite_static") if name == LITE else script_model(script_export(name, form))
    bins = preprocess_bins(tmp_path / "bins", case / "images", "--coco-json", case / "annotations_gt.json",
                           "--model", model)
    assert tester.main(["--backend", "openvino", "--model", str(model), "--bins", str(bins),
                        "--output", str(tmp_path / "raw"), "--no-progress"]) == 0
    postprocess_golden(tmp_path / "raw", bins, tmp_path / "eval", case=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["V_39", "V_39_dcn"])
def test_v39_dynamic_models_match_upstream(tmp_path, script_export, name):
    """Image mode on the other golden cases (the Lite case runs by default, above), on the dynamic
    files convert_model_into_onnx.py wrote in its own test."""
    case = CASES[name]
    model = script_model(script_export(name, "dynamic"))
    out = tmp_path / "out"
    assert tester.main(["--backend", "openvino", "--model", str(model), "--images", str(case / "images"),
                        "--coco-json", str(case / "annotations_gt.json"), "--output-dir", str(out),
                        "--threads", "2", "--no-progress"]) == 0
    check_golden_folder(out, name)


def test_precision_hint_is_reported(tmp_path, lite_dynamic):
    """bf16 is asked for: it takes effect where the CPU has AVX-512 BF16 or AMX; elsewhere
    OpenVINO keeps fp32 and the backend says so. fp32 stays fp32 (OpenVINO's own default on such
    CPUs would be bf16)."""
    from centermask2.cpu import cpu_flags
    from centermask2.engine.openvino_backend import OpenVINOBackend

    model = lite_dynamic
    backend = OpenVINOBackend(model, precision="bf16")
    assert backend.precision_used == ("bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32")
    assert OpenVINOBackend(model, precision="fp32").precision_used == "fp32"
    assert any((tmp_path / "cache" / "openvino").iterdir())  # the compiled model was cached


def test_precision_not_reported_is_unknown(lite_dynamic, monkeypatch, caplog):
    """A compiled model that does not say what it computes in (OpenVINO's AUTO device) gives
    ``"unknown"``, never the precision that was asked for."""
    import logging

    import openvino as ov

    from centermask2.engine.openvino_backend import OpenVINOBackend

    def no_property(self, name):
        raise RuntimeError(f"{name} is not supported")

    monkeypatch.setattr(ov.CompiledModel, "get_property", no_property)
    with caplog.at_level(logging.INFO):
        backend = OpenVINOBackend(lite_dynamic, precision="bf16", cache_dir="")
    assert backend.precision_used == "unknown"
    assert "does not report the precision" in caplog.text and "bf16 was asked for" in caplog.text
