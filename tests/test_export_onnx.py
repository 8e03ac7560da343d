"""ONNX export: standard operators only, parity with PyTorch and with upstream's golden outputs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from centermask2.config import load_config
from centermask2.contract import read_metadata
from centermask2.data import InputSpec, load_and_resize, pad_batch
from centermask2.data.categories import coco_class_names, coco_contiguous_to_dataset_id
from centermask2.engine.onnxruntime_backend import OnnxRuntimeBackend
from centermask2.engine.torch_backend import TorchBackend
from centermask2.export import ExportSettings, export_onnx
from centermask2.export.verify import BOUNDS, compare_outputs, verify_onnx
from centermask2.modeling import OUTPUT_NAMES, build_model
from golden import (
    CASES,
    CONFIGS,
    LITE,
    ROOT,
    assert_results_match,
    case_info,
    postprocess_golden,
    preprocess_bins,
    recipe_arrays,
    run_bins,
    script_ok,
    write_checkpoint,
)


def _model(case):
    cfg = load_config(CONFIGS / case_info(case)["config"], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in recipe_arrays(case).items()})
    return cfg, model


@pytest.fixture(scope="module")
def lite_model():
    return _model(LITE)[1]


# lite_dynamic and lite_static: tests/conftest.py


@pytest.fixture(scope="module")
def lite_static_b2(exported_model):
    return exported_model(LITE, input_size=(1344, 1344), batch_size=2)


@pytest.fixture(scope="module")
def lite_static_include(exported_model):
    return exported_model(LITE, input_size=(1344, 1344), padding="include")


@pytest.fixture(scope="module")
def lite_static_f32_opset16_simplified(exported_model):
    return exported_model(LITE, input_size=(1344, 1344), input_dtype="float32", opset=16, simplify=True)


def _images(case, spec):
    names = sorted(case_info(case)["num_detections"])
    return [load_and_resize(CASES[case] / "images" / n, spec)[0] for n in names]


def _spec(meta):
    return InputSpec(min_size=meta.min_size, max_size=meta.max_size, size_divisibility=meta.size_divisibility,
                     pad_to=meta.input_size)


def test_graphs_use_only_the_default_domain(lite_dynamic, lite_static, lite_static_f32_opset16_simplified):
    for path, opset in ((lite_dynamic, 17), (lite_static, 17), (lite_static_f32_opset16_simplified, 16)):
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert {n.domain for n in proto.graph.node} <= {""}
        assert {o.domain: o.version for o in proto.opset_import}.get("", None) == opset
        ops = {n.op_type for n in proto.graph.node}
        assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= ops
        assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)


def test_metadata_round_trips(lite_static, lite_dynamic):
    meta = read_metadata(lite_static)
    cfg = load_config(CONFIGS / case_info(LITE)["config"])
    assert meta.input_size == (1344, 1344) and meta.batch_size == 1 and not meta.dynamic
    assert meta.input_dtype == "uint8" and meta.input_format == "BGR"
    assert meta.min_size == 600 and meta.max_size == 1000 and meta.size_divisibility == 32
    assert meta.max_detections == 50
    assert meta.pixel_mean == list(cfg.MODEL.PIXEL_MEAN) and meta.pixel_std == list(cfg.MODEL.PIXEL_STD)
    assert meta.class_names == coco_class_names() and meta.category_ids == coco_contiguous_to_dataset_id()
    assert meta.output_names == list(OUTPUT_NAMES)
    assert "FCOS" in meta.config_yaml
    dyn = read_metadata(lite_dynamic)
    assert dyn.dynamic and dyn.input_size is None and dyn.batch_size is None


@pytest.mark.parametrize("size,batch", [((608, 928), 1), ((800, 1216), 1), ((320, 480), 2)])
def test_dynamic_matches_pytorch_on_other_sizes(lite_model, lite_dynamic, size, batch):
    """Exported with a 640x960 sample; run at other sizes and batch sizes."""
    rng = np.random.default_rng(sum(size) + batch)
    images = rng.integers(0, 256, size=(batch, 3, *size), dtype=np.uint8)
    sizes = np.array([[size[0], size[1]], [size[0] - 40, size[1] - 70]][:batch], dtype=np.int64)
    inputs = {"images": images, "image_sizes": sizes}
    ref = TorchBackend(lite_model).run(inputs)
    got = OnnxRuntimeBackend(lite_dynamic).run(inputs)
    for i in range(batch):
        report = compare_outputs({k: v[i:i + 1] for k, v in ref.items()}, {k: v[i:i + 1] for k, v in got.items()})
        assert report.ok, report.format() + str(report.problems)
        assert report.num_reference > 0


def test_dynamic_equals_static_at_the_static_size(lite_dynamic, lite_static):
    spec = _spec(read_metadata(lite_static))
    images, sizes = pad_batch(_images(LITE, spec)[:1], spec)
    a = OnnxRuntimeBackend(lite_dynamic).run({"images": images, "image_sizes": sizes})
    b = OnnxRuntimeBackend(lite_static).run({"images": images, "image_sizes": sizes})
    for key in OUTPUT_NAMES:
        np.testing.assert_allclose(a[key], b[key], atol=1e-4, rtol=1e-4, err_msg=key)


def test_static_batch_two_equals_two_single_runs(lite_static, lite_static_b2):
    spec = _spec(read_metadata(lite_static))
    ims = _images(LITE, spec)
    images, sizes = pad_batch(ims, spec)
    both = OnnxRuntimeBackend(lite_static_b2).run({"images": images, "image_sizes": sizes})
    single = OnnxRuntimeBackend(lite_static)
    for i in range(2):
        one = single.run({"images": images[i:i + 1], "image_sizes": sizes[i:i + 1]})
        for key in OUTPUT_NAMES:
            np.testing.assert_allclose(both[key][i], one[key][0], atol=1e-4, rtol=1e-4, err_msg=key)
    # a short last batch is filled and the fill dropped
    short = OnnxRuntimeBackend(lite_static_b2).run({"images": images[:1], "image_sizes": sizes[:1]})
    assert short["boxes"].shape[0] == 1


def test_blank_image_gives_zero_detections(tmp_path):
    cfg, model = _model(LITE)
    with torch.no_grad():
        model.proposal_generator.fcos_head.cls_logits.bias.fill_(-30.0)
    path = tmp_path / "blank.onnx"
    export_onnx(model, cfg, path, ExportSettings(input_size=(128, 160)), class_names=coco_class_names(),
                category_ids=coco_contiguous_to_dataset_id())
    out = OnnxRuntimeBackend(path).run({"images": np.zeros((1, 3, 128, 160), np.uint8),
                                        "image_sizes": np.array([[120, 150]])})
    assert out["num_detections"].tolist() == [0]
    assert out["boxes"].shape == (1, 50, 4) and not out["boxes"].any() and not out["masks"].any()


def _run_tester(tmp_path, model, case, gt_suffix, extra=()):
    root = CASES[case]
    out = tmp_path / f"out_{Path(model).stem}"
    cmd = [sys.executable, str(ROOT / "tester.py"), "--backend", "onnx", "--model", str(model),
           "--images", str(root / "images"), "--coco-json", str(root / f"annotations_gt{gt_suffix}.json"),
           "--output-dir", str(out), "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = json.loads((root / f"coco_instances_results{gt_suffix}.json").read_text())
    actual = json.loads((out / "coco_instances_results.json").read_text())
    assert_results_match(expected, actual)
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((root / f"metrics_gt{gt_suffix}.json").read_text())
    for task in ("bbox", "segm"):
        assert abs(got[task]["AP"] - want[task]["AP"]) <= 0.1, (task, got[task]["AP"], want[task]["AP"])


def test_lite_golden_dynamic_batch2(tmp_path, lite_dynamic):
    """A batch of two images of different sizes (600x600, 600x912): each gets its batch-1 result."""
    _run_tester(tmp_path, lite_dynamic, LITE, "", ["--batch-size", "2"])


def test_lite_golden_static_uint8(tmp_path, lite_static):
    """The default static model ignores its padding: upstream's default-padding results."""
    assert read_metadata(lite_static).padding == "ignore"
    _run_tester(tmp_path, lite_static, LITE, "")


def test_lite_golden_static_uint8_batch2(tmp_path, lite_static_b2):
    _run_tester(tmp_path, lite_static_b2, LITE, "")


def test_lite_golden_static_include_padding(tmp_path, lite_static_include):
    """--static-padding include: upstream run on the image padded to 1344x1344."""
    assert read_metadata(lite_static_include).padding == "include"
    _run_tester(tmp_path, lite_static_include, LITE, "_pad1344")


def test_lite_golden_static_float32_opset16_simplified(tmp_path, lite_static_f32_opset16_simplified):
    assert read_metadata(lite_static_f32_opset16_simplified).input_dtype == "float32"
    _run_tester(tmp_path, lite_static_f32_opset16_simplified, LITE, "", ["--threads", "2"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,form",
    # the static forms run through the .bin pipeline too, one per input dtype (the float32 one with
    # --index-base 1); OpenVINO runs the same four files (test_engine_openvino_backend)
    [("V_39", "dynamic"), ("V_39", "static-float32"), ("V_39_dcn", "dynamic"), ("V_39_dcn", "static-uint8")],
)
def test_v39_golden_through_the_scripts(tmp_path, script_export, case, form):
    """Upstream's default-padding results from every form; the _dcn_ model exports at opset 19 by
    default (ONNX DeformConv); the export passes its own --verify and prints no warning of ours."""
    export = script_export(case, form)
    assert export.returncode == 0, export.output
    assert "PyTorch and ONNX Runtime agree" in export.output
    assert export.noise == [], export.output
    onnx_path = export.path
    opsets = {o.version for o in onnx.load(str(onnx_path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")}
    assert opsets == ({19} if case == "V_39_dcn" else {17})
    # every form gives upstream's default-padding results; the dynamic one runs batches of 2
    _run_tester(tmp_path, onnx_path, case, "", ["--batch-size", "2"] if form == "dynamic" else [])
    if form != "dynamic":  # the .bin pipeline with the same static model
        root = CASES[case]
        bins = preprocess_bins(tmp_path / "bins", root / "images", "--coco-json", root / "annotations_gt.json",
                               "--model", onnx_path)
        index_base = ["--index-base", "1"] if form == "static-float32" else []
        raw = tmp_path / "raw"
        script_ok(run_bins(onnx_path, bins, raw, *index_base))
        assert (raw / ("000000000001_6.bin" if index_base else "000000000001_0.bin")).is_file()
        postprocess_golden(raw, bins, tmp_path / "eval", case=case)


@pytest.mark.parametrize(
    "args,message",
    [
        (["MODEL.FCOS.NMS_THRESH", "0.5"], "NMS_TH"),
        (["--input-size", "1000x1000"], "multiple"),
        (["MODEL.WEIGHTS", "no/such/model.pth"], "no/such/model.pth"),
        (["--opset", "13"], "opset"),
        ([], "MODEL.WEIGHTS"),
    ],
)
def test_export_bad_arguments_fail_fast(tmp_path, args, message):
    cmd = [sys.executable, str(ROOT / "convert_model_into_onnx.py"),
           "--config-file", str(CONFIGS / case_info(LITE)["config"]), "--output", str(tmp_path / "m.onnx")]
    options = [a for a in args if a.startswith("--")]
    opts = [a for a in args if not a.startswith("--")]
    if options:
        cmd += [args[0], args[1]]
        opts = ["MODEL.WEIGHTS", str(write_checkpoint(LITE, tmp_path / "ok.pth"))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + opts, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "m.onnx").exists()
    assert time.perf_counter() - t0 < 60


def _outputs(k=5, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (1, k, 2)).astype(np.float32)
    return {"boxes": np.concatenate([xy, xy + 20], axis=2), "scores": np.linspace(0.9, 0.5, k)[None].astype(np.float32),
            "classes": np.arange(k)[None], "masks": rng.uniform(size=(1, k, 28, 28)).astype(np.float32),
            "mask_scores": np.full((1, k), 0.5, np.float32), "num_detections": np.array([k])}


def test_compare_outputs_flags_disagreement():
    ref = _outputs()
    assert compare_outputs(ref, ref).ok
    worse = dict(ref, scores=ref["scores"] + 0.01)
    assert compare_outputs(ref, worse).problems == ["scores: max |difference| 0.01 over matched detections > bound 0.002"]
    swapped = dict(ref, classes=ref["classes"][:, ::-1].copy())
    assert not compare_outputs(ref, swapped).ok


@pytest.mark.parametrize(
    "name,change,bound",
    [
        ("boxes", lambda v: v + np.float32([0, 0, 1.5, 0]), BOUNDS["boxes"]),
        ("masks", lambda v: np.where(np.arange(28) == 3, v * 0.5, v), BOUNDS["masks"]),
        ("mask_scores", lambda v: v - 0.01, BOUNDS["mask_scores"]),
        ("masks", lambda v: np.full_like(v, np.nan), BOUNDS["masks"]),
    ],
    ids=["boxes", "masks", "mask_scores", "masks_nan"],
)
def test_compare_outputs_names_the_output_that_disagrees(name, change, bound):
    """Each output is bounded on its own, and the problem names it, what was measured and the bound."""
    ref = _outputs()
    report = compare_outputs(ref, dict(ref, **{name: change(ref[name])}))
    assert len(report.problems) == 1, report.problems
    unit = " px" if name == "boxes" else ""
    assert report.problems[0].startswith(f"{name}: max |difference| ")
    assert report.problems[0].endswith(f"over matched detections > bound {bound:g}{unit}")


def test_compare_outputs_bounds_sem_seg():
    """Panoptic models: the ``sem_seg`` logits are compared too (and must be there)."""
    ref = dict(_outputs(), sem_seg=np.random.default_rng(1).normal(size=(1, 54, 40, 60)).astype(np.float32))
    same = compare_outputs(ref, ref)
    assert same.ok and same.max_sem_seg_diff == 0.0 and "sem_seg logits 0" in same.format()
    off = ref["sem_seg"].copy()
    off[0, 3, 10, 10] += 0.5
    report = compare_outputs(ref, dict(ref, sem_seg=off))
    assert report.problems == [f"sem_seg: max |difference| 0.5 over the whole output > bound {BOUNDS['sem_seg']:g}"]
    missing = {k: v for k, v in ref.items() if k != "sem_seg"}
    assert compare_outputs(ref, missing).problems == ["sem_seg: missing from the candidate's outputs"]
    assert compare_outputs(missing, missing).max_sem_seg_diff is None


@pytest.mark.parametrize("which", ["dynamic", "static"])
def test_verify_bounds_hold_on_correct_exports(lite_model, lite_dynamic, lite_static, which):
    """--verify's check on the Lite golden model's correct exports, both images: every output well
    inside its bound (measured: see BOUNDS)."""
    path = lite_dynamic if which == "dynamic" else lite_static
    for image in sorted((CASES[LITE] / "images").iterdir()):
        report = verify_onnx(lite_model, path, image)
        assert report.ok, report.problems
        assert report.matched == report.num_reference == report.num_candidate > 0
        assert report.max_mask_diff <= BOUNDS["masks"] / 10 and report.max_mask_score_diff <= BOUNDS["mask_scores"] / 10


def test_verify_exits_1_when_the_mask_branch_is_broken(tmp_path, monkeypatch, caplog):
    """An export whose RoiAlign samples with the other coordinate rule (``output_half_pixel``, the
    aligned=False flavour, for this model's ROIAlignV2) leaves boxes and scores intact and moves
    every mask: convert_model_into_onnx.py --verify exits 1 and names the mask outputs."""
    from centermask2.cli import export_onnx as cli
    from centermask2.export import onnx_ops

    right = onnx_ops.op.RoiAlign
    other = {"half_pixel": "output_half_pixel", "output_half_pixel": "half_pixel"}

    def wrong_roi_align(*args, **kwargs):
        kwargs["coordinate_transformation_mode"] = other[kwargs["coordinate_transformation_mode"]]
        return right(*args, **kwargs)

    monkeypatch.setattr(onnx_ops.op, "RoiAlign", wrong_roi_align)
    ckpt = write_checkpoint(LITE, tmp_path / "lite.pth")
    onnx_path = tmp_path / "broken.onnx"
    # static (an export several times cheaper than a dynamic one; the lowering is the same)
    rc = cli.main(["--config-file", str(CONFIGS / case_info(LITE)["config"]), "--output", str(onnx_path),
                   "--input-size", "1344x1344", "--verify", str(CASES[LITE] / "images" / "000000000001.png"), "MODEL.WEIGHTS", str(ckpt)])
    modes = {a.s.decode() for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "RoiAlign"
             for a in n.attribute if a.name == "coordinate_transformation_mode"}
    assert modes == {"output_half_pixel"}  # the export really is broken, and only there
    assert rc == 1, caplog.text
    disagree = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("PyTorch and ONNX Runtime disagree"))
    assert "masks: max |difference|" in disagree and "mask_scores: max |difference|" in disagree
    assert "boxes:" not in disagree and "scores: max" not in disagree.replace("mask_scores: max", "")
    assert "agree." not in caplog.text


def test_export_prints_our_lines_only(script_export):
    """No PyTorch-internal FutureWarnings or exporter registry notices reach the user, and our own
    modules raise no warning at all (a dynamic export: its sizes are symbolic). The session's
    Lite dynamic model (``lite_dynamic``) is this export."""
    export = script_export(LITE, "dynamic")
    assert export.returncode == 0, export.output
    assert export.noise == [], export.output
    assert "Exported" in export.output and "PyTorch and ONNX Runtime agree" in export.output
