"""Panoptic-CenterMask on every path against upstream's golden outputs (golden_panoptic_V_39):
PyTorch (.pth; the .pkl loads the same weights), ONNX Runtime and OpenVINO on a dynamic export,
the .bin pipeline on a static 1344x1344 uint8 export, and a dynamic batch of the two images of
different sizes. Both exports are convert_model_into_onnx.py's, made with --verify (which must
pass) in the background (the session fixtures ``panoptic_dynamic`` and ``panoptic_static``).

Each run is scored as the issue asks: instances with the reference comparator's defaults;
panoptic segments matched by category and IoU > 0.5 (>= 95% both ways) with >= 99.5% of pixels of
the same category; semantic PNGs agreeing on >= 99.5% of pixels; PQ / SQ / RQ (all, things, stuff)
and mIoU within 0.1 of upstream's metrics for PyTorch and 0.5 for the other runtimes; bbox / segm
AP within 0.1.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from centermask2.evaluation.panoptic import read_panoptic_results
from golden import (
    CASES,
    CONFIGS,
    assert_results_match,
    case_info,
    run_script,
    script_ok,
    write_checkpoint,
)

CASE = "panoptic_V_39"
ROOT = CASES[CASE]
GT = ["--coco-json", ROOT / "annotations_gt.json", "--panoptic-json", ROOT / "annotations_panoptic_gt.json",
      "--panoptic-root", ROOT / "panoptic_gt", "--sem-seg-root", ROOT / "sem_seg_gt"]
PANOPTIC_KEYS = [f"{m}{g}" for g in ("", "_th", "_st") for m in ("PQ", "SQ", "RQ")]


def _segments(json_path: Path) -> dict[str, tuple[np.ndarray, dict[int, int]]]:
    """Per PNG name: (segment id map, segment id -> dataset category id)."""
    data = read_panoptic_results(json_path)
    root = json_path.parent / json_path.stem
    out = {}
    for ann in json.loads(json_path.read_text())["annotations"]:
        rgb = np.asarray(Image.open(root / ann["file_name"]).convert("RGB"), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        out[ann["file_name"]] = (ids, {int(s["id"]): int(s["category_id"]) for s in ann["segments_info"]})
    assert len(out) == len(data.images)
    return out


def _category_map(ids: np.ndarray, categories: dict[int, int]) -> np.ndarray:
    """Each pixel's category (0 for void and unlisted ids)."""
    unique, inverse = np.unique(ids, return_inverse=True)
    return np.array([categories.get(int(i), 0) for i in unique])[inverse].reshape(ids.shape)


def compare_panoptic(expected_json: Path, actual_json: Path) -> dict:
    """Segments matched by category and IoU > 0.5 (both ways, each used once) and the share of
    pixels whose category agrees (void counts as a category)."""
    expected, actual = _segments(expected_json), _segments(actual_json)
    assert sorted(expected) == sorted(actual)
    matched = n_expected = n_actual = same = pixels = 0
    for name, (e_ids, e_cats) in expected.items():
        a_ids, a_cats = actual[name]
        assert e_ids.shape == a_ids.shape, name
        n_expected += len(e_cats)
        n_actual += len(a_cats)
        for e_id, e_cat in e_cats.items():
            e_mask = e_ids == e_id
            for a_id in np.unique(a_ids[e_mask]):
                if a_cats.get(int(a_id)) != e_cat:
                    continue
                a_mask = a_ids == a_id
                if (e_mask & a_mask).sum() / (e_mask | a_mask).sum() > 0.5:
                    matched += 1
                    break
        same += int((_category_map(e_ids, e_cats) == _category_map(a_ids, a_cats)).sum())
        pixels += e_ids.size
    return {"recall": matched / max(n_expected, 1), "precision": matched / max(n_actual, 1),
            "pixel_agreement": same / pixels}


def check_panoptic_folder(out: Path, metric_tol: float, tier: str = "runtime") -> None:
    """``out`` (a run's output folder with metrics.json) reproduces the golden case (instances within
    ``tier``'s bounds, :data:`golden.TIERS`)."""
    expected = json.loads((ROOT / "coco_instances_results.json").read_text())
    assert_results_match(expected, json.loads((out / "coco_instances_results.json").read_text()), tier)
    stats = compare_panoptic(ROOT / "panoptic_results.json", out / "panoptic_results.json")
    assert stats["recall"] >= 0.95 and stats["precision"] >= 0.95 and stats["pixel_agreement"] >= 0.995, stats
    for png in sorted((ROOT / "sem_seg_results").iterdir()):
        want, got = np.asarray(Image.open(png)), np.asarray(Image.open(out / "sem_seg_results" / png.name))
        assert want.shape == got.shape and (want == got).mean() >= 0.995, png.name
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((ROOT / "metrics_gt.json").read_text())
    for key in PANOPTIC_KEYS:
        assert abs(got["panoptic_seg"][key] - want["panoptic_seg"][key]) <= metric_tol, (key, got["panoptic_seg"], metric_tol)
    assert abs(got["sem_seg"]["mIoU"] - want["sem_seg"]["mIoU"]) <= metric_tol, got["sem_seg"]["mIoU"]
    for task in ("bbox", "segm"):
        assert abs(got[task]["AP"] - want[task]["AP"]) <= 0.1, (task, got[task]["AP"], want[task]["AP"])


def _tester(out: Path, *model_args) -> None:
    script_ok(run_script("tester.py", *model_args, "--images", ROOT / "images", *GT, "--output-dir", out,
                         "--threads", "2", timeout=900))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(CASE, tmp_path_factory.mktemp("panoptic") / "model.pth")


def test_pytorch_pth(tmp_path, checkpoint):
    from centermask2.cli import tester

    args = ["--backend", "torch", "--config-file", CONFIGS / case_info(CASE)["config"], "--images", ROOT / "images",
            *GT, "--output-dir", tmp_path / "out", "--threads", "2", "--no-progress",
            "MODEL.WEIGHTS", checkpoint, "MODEL.DEVICE", "cpu"]  # the overrides last
    threads = torch.get_num_threads()
    try:
        assert tester.main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)
    check_panoptic_folder(tmp_path / "out", metric_tol=0.1, tier="torch")


def test_pkl_checkpoint_loads_the_same_weights(tmp_path, checkpoint):
    """The model-zoo .pkl gives the model exactly the .pth's tensors, so every path's results
    above hold for it too."""
    from centermask2.checkpoint import load_weights
    from centermask2.config import load_config
    from centermask2.modeling import build_model

    cfg = load_config(CONFIGS / case_info(CASE)["config"], ["MODEL.DEVICE", "cpu"])
    models = []
    for path in (checkpoint, write_checkpoint(CASE, tmp_path / "model.pkl", "pkl")):
        model = build_model(cfg)
        load_weights(model, path)
        models.append(model.state_dict())
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_dynamic_export(tmp_path, panoptic_dynamic, backend):
    _tester(tmp_path / "out", "--backend", backend, "--model", panoptic_dynamic)
    check_panoptic_folder(tmp_path / "out", metric_tol=0.5)


def test_dynamic_batch_of_two_sizes_gives_each_image_its_batch1_result(tmp_path, panoptic_dynamic):
    """The two images (741x500 and 512x512) in one call: each image's instances, panoptic PNG and
    semantic PNG are those of its own run."""
    one, two = tmp_path / "batch1", tmp_path / "batch2"
    for out, batch in ((one, "1"), (two, "2")):
        script_ok(run_script("tester.py", "--backend", "onnx", "--model", panoptic_dynamic, "--images", ROOT / "images",
                             "--output-dir", out, "--batch-size", batch, "--threads", "2", timeout=900))
    assert_results_match(json.loads((one / "coco_instances_results.json").read_text()),
                         json.loads((two / "coco_instances_results.json").read_text()), "torch")
    stats = compare_panoptic(one / "panoptic_results.json", two / "panoptic_results.json")
    assert stats == {"recall": 1.0, "precision": 1.0, "pixel_agreement": pytest.approx(1.0, abs=1e-4)}, stats
    for png in sorted((one / "sem_seg_results").iterdir()):
        a, b = np.asarray(Image.open(png)), np.asarray(Image.open(two / "sem_seg_results" / png.name))
        assert (a == b).mean() >= 0.9999, png.name


def test_bin_pipeline_static_1344_uint8(tmp_path, panoptic_static):
    model = panoptic_static
    bins, raw, out = tmp_path / "bins", tmp_path / "raw", tmp_path / "out"
    script_ok(run_script("preprocess_inputs_to_bin.py", "--images", ROOT / "images", "--coco-json",
                         ROOT / "annotations.json", "--model", model, "--output", bins))
    script_ok(run_script("tester.py", "--model", model, "--bins", bins, "--output", raw, "--threads", "2", timeout=900))
    assert (raw / "000000000001_6.bin").stat().st_size == 4 * 54 * 336 * 336  # sem_seg [1, 54, 336, 336] f32
    script_ok(run_script("postprocess_bin_outputs.py", "--outputs", raw, "--info", bins / "bin_info.json",
                         "--output-dir", out, *GT))
    check_panoptic_folder(out, metric_tol=0.5)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_writes_the_same_files(tmp_path, panoptic_dynamic):
    """tester.py --ray on a panoptic model: the actors' tasks write the PNGs, the driver the JSON
    files; every file is the single-process run's, byte for byte."""
    runs = {}
    for name, extra in (("single", []), ("ray", ["--ray", "--ray-actors", "1"])):
        out = tmp_path / name
        script_ok(run_script("tester.py", "--backend", "onnx", "--model", panoptic_dynamic, "--images", ROOT / "images",
                             "--output-dir", out, "--threads", "1", *extra, timeout=900))
        runs[name] = _files(out)
    assert sorted(runs["ray"]) == sorted(runs["single"])
    assert "panoptic_results.json" in runs["ray"] and "sem_seg_results/000000000002.png" in runs["ray"]
    assert runs["ray"] == runs["single"]
