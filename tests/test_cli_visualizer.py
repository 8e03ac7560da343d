"""Pictures: files written at the right size, masks coloured where the mask is, side-by-side mode."""

import json
import logging

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

import centermask2.cli.visualizer as visualizer
from centermask2.evaluation.matching import summarize_match as match_detections
from centermask2.visualization import draw_instances, instance_colors
from golden import CASES, LITE


def _record(mask: np.ndarray, bbox, cat=1, score=0.9):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"image_id": 1, "category_id": cat, "bbox": list(bbox), "score": score, "mask_score": score * 0.5,
            "segmentation": rle}


def test_instance_colors_are_distinct_and_stable():
    a, b = instance_colors(50), instance_colors(50)
    assert a == b
    assert len(set(a)) == 50
    # consecutive instances differ clearly
    for c1, c2 in zip(a, a[1:]):
        assert np.abs(np.array(c1) - np.array(c2)).max() >= 40


@pytest.mark.parametrize("gray", [False, True])
def test_mask_pixels_are_coloured_only_where_the_mask_is(gray):
    h, w = 200, 300
    base = np.full((h, w) if gray else (h, w, 3), 100, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[80:160, 100:220] = True
    out = draw_instances(base, [_record(mask, (100, 80, 120, 80))], {1: "person"})
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    color = np.array(instance_colors(1)[0], np.float32)
    inner = out[100:150, 120:200].reshape(-1, 3).astype(np.float32)
    expected = 100 * 0.55 + color * 0.45
    assert np.abs(inner - expected).max() <= 1.5  # translucent blend inside the mask
    assert (out[5:60, 5:90] == 100).all()  # far from the detection: untouched
    assert (out[170:, 240:] == 100).all()


def test_labels_on_tiny_and_large_images():
    for h, w in ((24, 32), (2000, 3000)):
        mask = np.zeros((h, w), bool)
        mask[: h // 2, : w // 2] = True
        out = draw_instances(np.zeros((h, w, 3), np.uint8), [_record(mask, (0, 0, w / 2, h / 2))], {1: "person"})
        assert out.shape == (h, w, 3)
        assert out.any()


def test_match_detections():
    m = np.zeros((10, 10), bool)
    a = [_record(m, (0, 0, 10, 10), cat=1), _record(m, (20, 20, 5, 5), cat=2)]
    b = [_record(m, (0, 0, 10, 10.2), cat=1), _record(m, (20, 20, 5, 5), cat=3)]
    s = match_detections(a, b)
    assert (s.left, s.right, s.matched) == (2, 2, 1)


def test_script_results_and_side_by_side(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    case = CASES["lite_V_19_slim_dw"]
    results = case / "coco_instances_results.json"
    out = tmp_path / "vis dir"
    rc = visualizer.main(["--results", str(results), "--images", str(case / "images"), "--output-dir", str(out),
                          "--score-threshold", "0.3", "--no-progress"])
    assert rc == 0
    for name in ("000000000001", "000000000002"):
        src = cv2.imread(str(case / "images" / f"{name}.png"))
        pic = cv2.imread(str(out / f"{name}.png"))
        assert pic.shape == src.shape
        assert (pic != src).any()
    rc = visualizer.main(["--results", str(results), "--compare", str(results), "--images", str(case / "images"),
                          "--output-dir", str(out), "--format", "jpg", "--score", "mask", "--score-threshold", "0.1",
                          "--no-progress"])
    assert rc == 0
    pic = cv2.imread(str(out / "000000000001_compare.jpg"))
    src = cv2.imread(str(case / "images" / "000000000001.png"))
    assert pic.shape[1] == 2 * src.shape[1] + 8 and pic.shape[0] > src.shape[0]
    records = [r for r in json.loads(results.read_text()) if r["mask_score"] >= 0.1]
    assert f"{len(records)} vs {len(records)} detections, {len(records)} matched" in caplog.text


def test_script_needs_exactly_one_source(tmp_path, caplog):
    case = CASES[LITE]
    assert visualizer.main(["--images", str(case / "images"), "--output-dir", str(tmp_path)]) == 2
    assert "error: give exactly one source: --results R.json, --model m.onnx or --config-file CFG" in caplog.text
