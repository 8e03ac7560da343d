"""Tests of centermask2.evaluation.sem_seg (detectron2's SemSegEvaluator) and of making the
``panoptic_stuff`` ground truth (centermask2.data.panoptic_stuff, tools/prepare_panoptic_stuff.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from centermask2.data.panoptic_stuff import panoptic_to_semantic, prepare_panoptic_stuff
from centermask2.errors import InputError, MissingFileError
from centermask2.evaluation.sem_seg import (
    SemSegEvaluator,
    confusion_matrix,
    evaluate_sem_seg,
    read_sem_seg_png,
    sem_seg_metrics,
)
from golden import PANOPTIC, ROOT

NAMES = ["000000000001.png", "000000000002.png"]
TOL = 1e-4


def _assert_like_golden(metrics: dict) -> None:
    expected = json.loads((PANOPTIC / "metrics_gt.json").read_text())["sem_seg"]
    assert list(metrics) == list(expected)  # every key, in detectron2's order
    for key, value in expected.items():
        if value is None:
            assert metrics[key] is None, key
        else:
            assert metrics[key] is not None and abs(metrics[key] - value) <= TOL, (key, metrics[key], value)


def test_reproduces_upstream_sem_seg_metrics(caplog):
    caplog.set_level("INFO")
    metrics = evaluate_sem_seg(PANOPTIC / "sem_seg_results", PANOPTIC / "sem_seg_gt", NAMES)
    _assert_like_golden(metrics["sem_seg"])
    assert "mIoU" in caplog.text and "69.504" in caplog.text


def test_in_memory_scores_give_the_same_metrics():
    scores = {}
    for name in NAMES:
        labels = np.asarray(Image.open(PANOPTIC / "sem_seg_results" / name))
        one_hot = np.zeros((54, *labels.shape), np.float32)
        np.put_along_axis(one_hot, labels[None].astype(np.int64), 1.0, axis=0)
        scores[name] = one_hot
    _assert_like_golden(evaluate_sem_seg(scores, PANOPTIC / "sem_seg_gt", NAMES)["sem_seg"])


def test_metrics_by_hand():
    # classes a, b, c; ground truth: a a b b | void | c; prediction: a b b b | a | b
    gt = np.array([[0, 0, 1, 1, 255, 2]])
    pred = np.array([[0, 1, 1, 1, 0, 1]])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.shape == (4, 4) and conf[0, 3] == 1  # prediction a on void: counted apart
    m = sem_seg_metrics(conf, ["a", "b", "c"])
    # a: tp 1, gt 2, pred 1 -> IoU 1/2, ACC 1/2; b: tp 2, gt 2, pred 4 -> IoU 1/2, ACC 1; c: tp 0, gt 1 -> 0, 0
    assert m["IoU-a"] == pytest.approx(50) and m["IoU-b"] == pytest.approx(50) and m["IoU-c"] == 0.0
    assert m["ACC-a"] == pytest.approx(50) and m["ACC-b"] == pytest.approx(100) and m["ACC-c"] == 0.0
    assert m["mIoU"] == pytest.approx(100 / 3) and m["mACC"] == pytest.approx(50)
    assert m["fwIoU"] == pytest.approx(100 * (0.4 * 0.5 + 0.4 * 0.5))
    assert m["pACC"] == pytest.approx(60)
    # a class absent from the ground truth is None, even when predicted
    m = sem_seg_metrics(confusion_matrix(np.array([[0, 2]]), np.array([[0, 0]]), 3), ["a", "b", "c"])
    assert m["IoU-b"] is None and m["ACC-c"] is None and m["IoU-a"] == pytest.approx(50)
    assert m["mIoU"] == pytest.approx(50)


def test_evaluator_accumulates_images():
    evaluator = SemSegEvaluator(["a", "b"])
    evaluator.process(np.array([[0, 1]]), np.array([[0, 1]], np.uint8))
    evaluator.process(np.array([[1, 1]]), np.array([[0, 255]], np.uint8))
    assert evaluator.evaluate()["sem_seg"]["pACC"] == pytest.approx(200 / 3)
    with pytest.raises(InputError, match="0..1"):
        evaluator.process(np.array([[0, 2]]), np.array([[0, 0]], np.uint8))


# ---------------------------------------------------------------- hostile ground truth


def _gt_copy(tmp_path: Path) -> Path:
    root = tmp_path / "sem_seg_gt"
    shutil.copytree(PANOPTIC / "sem_seg_gt", root)
    return root


def test_ground_truth_missing(tmp_path):
    root = _gt_copy(tmp_path)
    (root / NAMES[1]).unlink()
    with pytest.raises(MissingFileError, match=r"1 of 2 semantic ground truth PNG\(s\) not found, e\.g\. .*000000000002"):
        evaluate_sem_seg(PANOPTIC / "sem_seg_results", root, NAMES)


def test_ground_truth_of_the_wrong_size(tmp_path):
    root = _gt_copy(tmp_path)
    Image.open(root / NAMES[0]).crop((0, 0, 700, 500)).save(root / NAMES[0])
    with pytest.raises(InputError, match=r"000000000001\.png.* is 741x500 \(width x height\) but its ground truth is 700x500"):
        evaluate_sem_seg(PANOPTIC / "sem_seg_results", root, NAMES)
    with pytest.raises(InputError, match=r"000000000001\.png.* is 700x500 .* but the image is 741x500"):
        evaluate_sem_seg(PANOPTIC / "sem_seg_results", root, NAMES, image_sizes={NAMES[0]: (500, 741)})


def test_ground_truth_label_out_of_range(tmp_path):
    root = _gt_copy(tmp_path)
    labels = np.asarray(Image.open(root / NAMES[1])).copy()
    labels[3, 4] = 60
    Image.fromarray(labels).save(root / NAMES[1])
    with pytest.raises(InputError, match=r"000000000002\.png.* label\(s\) \[60\] outside 0\.\.53 and 255 \(void\)"):
        evaluate_sem_seg(PANOPTIC / "sem_seg_results", root, NAMES)


def test_ground_truth_not_a_label_png(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 2)).save(path)
    with pytest.raises(InputError, match=r"mode 'RGB'; expected an 8-bit"):
        read_sem_seg_png(path, 54)


def test_prediction_with_void_is_refused(tmp_path):
    preds = tmp_path / "pred"
    shutil.copytree(PANOPTIC / "sem_seg_results", preds)
    labels = np.asarray(Image.open(preds / NAMES[0])).copy()
    labels[0, 0] = 255
    Image.fromarray(labels).save(preds / NAMES[0])
    with pytest.raises(InputError, match=r"semantic prediction PNG .* label\(s\) \[255\] outside 0\.\.53;"):
        evaluate_sem_seg(preds, PANOPTIC / "sem_seg_gt", NAMES)


# ---------------------------------------------------------------- panoptic_stuff ground truth


def test_panoptic_to_semantic():
    ids = np.array([[0, 5, 5, 9], [7, 7, 9, 0]])
    labels = panoptic_to_semantic(ids, np.array([5, 7, 9]), np.array([1, 92, 200]), {1: 0, 92: 1, 200: 53})
    np.testing.assert_array_equal(labels, [[255, 0, 0, 53], [1, 1, 53, 255]])
    assert labels.dtype == np.uint8


def test_prepare_reproduces_upstream_panoptic_stuff(tmp_path):
    out = tmp_path / "panoptic stuff"
    summary = prepare_panoptic_stuff(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", out, progress=False)
    assert summary.ok and summary.num_images == 2 and summary.num_resumed == 0
    for name in NAMES:
        written = Image.open(out / name)
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), np.asarray(Image.open(PANOPTIC / "sem_seg_gt" / name)))
    # resumable: finished files are kept, a missing one is made again
    (out / NAMES[1]).unlink()
    before = (out / NAMES[0]).stat().st_mtime_ns
    summary = prepare_panoptic_stuff(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", out,
                                     resume=True, progress=False)
    assert (summary.num_images, summary.num_resumed) == (1, 1)
    assert (out / NAMES[0]).stat().st_mtime_ns == before
    np.testing.assert_array_equal(np.asarray(Image.open(out / NAMES[1])),
                                  np.asarray(Image.open(PANOPTIC / "sem_seg_gt" / NAMES[1])))


def test_prepare_names_bad_images_and_goes_on(tmp_path):
    gt_root = tmp_path / "panoptic_gt"
    shutil.copytree(PANOPTIC / "panoptic_gt", gt_root)
    Image.open(gt_root / NAMES[0]).crop((0, 0, 10, 10)).save(gt_root / NAMES[0])
    summary = prepare_panoptic_stuff(PANOPTIC / "annotations_panoptic_gt.json", gt_root, tmp_path / "out", progress=False)
    assert summary.num_images == 1 and [f for f, _ in summary.failed] == [NAMES[0]]
    assert "is 10x10" in summary.failed[0][1]
    assert (tmp_path / "out" / NAMES[1]).is_file() and not (tmp_path / "out" / NAMES[0]).exists()


def test_prepare_refuses_categories_it_cannot_map(tmp_path):
    data = json.loads((PANOPTIC / "annotations_panoptic_gt.json").read_text())
    data["categories"].append({"id": 300, "name": "new", "isthing": 0})
    data["annotations"][0]["segments_info"][0]["category_id"] = 300
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"uses category 300, which is not a COCO panoptic category"):
        prepare_panoptic_stuff(path, PANOPTIC / "panoptic_gt", tmp_path / "out", progress=False)


def test_prepare_script(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "prepare_panoptic_stuff.py"), "--panoptic-json",
           str(PANOPTIC / "annotations_panoptic_gt.json"), "--panoptic-root", str(PANOPTIC / "panoptic_gt"),
           "--output-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 written" in proc.stderr
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "2 kept from an earlier run" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == NAMES
    proc = subprocess.run([*cmd[:3], str(tmp_path / "none.json"), *cmd[4:]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "none.json" in proc.stderr and "Traceback" not in proc.stderr
