"""The evaluation-only mode of postprocess_bin_outputs.py on Panoptic-CenterMask outputs:
upstream's own files reproduce every figure of its metrics (panoptic_seg, sem_seg, bbox, segm)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from centermask2.cli.postprocess import main
from golden import PANOPTIC, ROOT

TOL = 1e-4


def _args(out: Path, **override: Path) -> list[str]:
    files = {
        "--results": PANOPTIC / "coco_instances_results.json",
        "--coco-json": PANOPTIC / "annotations_gt.json",
        "--panoptic-results": PANOPTIC / "panoptic_results.json",
        "--panoptic-json": PANOPTIC / "annotations_panoptic_gt.json",
        "--panoptic-root": PANOPTIC / "panoptic_gt",
        "--sem-seg-root": PANOPTIC / "sem_seg_gt",
        "--output-dir": out,
    }
    files.update({f"--{k.replace('_', '-')}": v for k, v in override.items()})
    return [str(a) for k, v in files.items() if v is not None for a in (k, v)]


def _close(actual, expected) -> bool:
    if expected is None:
        return actual is None
    return actual is not None and abs(actual - expected) <= TOL


def _assert_like_golden(metrics: dict, tasks: tuple[str, ...]) -> None:
    golden = json.loads((PANOPTIC / "metrics_gt.json").read_text())
    for task in tasks:
        for key, value in golden[task].items():
            if task in ("bbox", "segm"):
                # ours: overall AP with -100 where undefined, per-category AP of the categories with ground truth
                if key.startswith("AP-"):
                    actual = metrics[f"{task}_per_category"].get(key[3:])
                else:
                    actual = None if metrics[task][key] == -100 else metrics[task][key]
            else:
                actual = metrics[task][key]
            assert _close(actual, value), (task, key, actual, value)
    for task in ("panoptic_seg", "sem_seg"):
        if task in tasks:
            assert list(metrics[task]) == list(golden[task]), task


def test_evaluation_only_reproduces_every_upstream_figure(tmp_path, capsys):
    out = tmp_path / "eval out"
    assert main(_args(out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"panoptic_seg", "sem_seg", "bbox", "segm"} <= set(metrics)
    _assert_like_golden(metrics, ("panoptic_seg", "sem_seg", "bbox", "segm"))
    printed = capsys.readouterr().out
    assert "panoptic_seg" in printed and "49.875" in printed and "69.504" in printed and "bbox" in printed


def test_dataset_layout_and_no_semantic_predictions(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO")
    coco = tmp_path / "datasets" / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copy(PANOPTIC / "annotations_gt.json", coco / "annotations" / "instances_val2017.json")
    shutil.copy(PANOPTIC / "annotations_panoptic_gt.json", coco / "annotations" / "panoptic_val2017.json")
    shutil.copytree(PANOPTIC / "panoptic_gt", coco / "panoptic_val2017")
    shutil.copytree(PANOPTIC / "sem_seg_gt", coco / "panoptic_stuff_val2017")
    preds = tmp_path / "predictions"  # without sem_seg_results/
    shutil.copytree(PANOPTIC / "panoptic_results", preds / "panoptic_results")
    shutil.copy(PANOPTIC / "panoptic_results.json", preds)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    out = tmp_path / "out"
    args = ["--results", str(PANOPTIC / "coco_instances_results.json"), "--panoptic-results",
            str(preds / "panoptic_results.json"), "--dataset", "coco_2017_val_panoptic", "--output-dir", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "sem_seg" not in metrics
    assert "No sem_seg_results/ folder next to" in caplog.text
    _assert_like_golden(metrics, ("panoptic_seg", "bbox", "segm"))
    # with semantic predictions next to the results, the dataset's panoptic_stuff folder is used
    shutil.copytree(PANOPTIC / "sem_seg_results", preds / "sem_seg_results")
    assert main(args) == 0
    _assert_like_golden(json.loads((out / "metrics.json").read_text()), ("sem_seg",))


def _said(capsys, caplog) -> str:
    text = capsys.readouterr().err + caplog.text
    caplog.clear()
    return text


def test_bad_inputs_exit_2_with_a_named_error(tmp_path, capsys, caplog):
    gt_root = tmp_path / "panoptic_gt"
    shutil.copytree(PANOPTIC / "panoptic_gt", gt_root)
    Image.open(gt_root / "000000000001.png").crop((0, 0, 700, 500)).save(gt_root / "000000000001.png")
    assert main(_args(tmp_path / "out", panoptic_root=gt_root)) == 2
    said = _said(capsys, caplog)
    assert "error: " in said and "000000000001.png" in said and "700x500" in said
    assert not (tmp_path / "out" / "metrics.json").exists()

    (gt_root / "000000000002.png").unlink()
    assert main(_args(tmp_path / "out", panoptic_root=gt_root)) == 2
    assert "000000000002.png" in _said(capsys, caplog)

    assert main(_args(tmp_path / "out", sem_seg_root=tmp_path / "nowhere")) == 2
    assert "--sem-seg-root" in _said(capsys, caplog)

    assert main(_args(tmp_path / "out", panoptic_json=None)) == 2
    assert "--panoptic-json" in _said(capsys, caplog)

    assert main(["--panoptic-json", str(PANOPTIC / "annotations_panoptic_gt.json"), "--output-dir", str(tmp_path)]) == 2
    assert "--panoptic-results" in _said(capsys, caplog)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
        assert main(["--panoptic-results", str(PANOPTIC / "panoptic_results.json"), "--dataset",
                     "coco_2017_val_panoptic"]) == 2
        assert "DETECTRON2_DATASETS" in _said(capsys, caplog)


def test_script_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "postprocess_bin_outputs.py"),
                           *_args(tmp_path / "out", results=None, coco_json=None)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Panoptic Evaluation Results" in proc.stderr and "Semantic segmentation results" in proc.stderr
    assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())) == {
        "panoptic_seg", "panoptic_seg_per_class", "sem_seg"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotations": [}')
    proc = subprocess.run([sys.executable, str(ROOT / "postprocess_bin_outputs.py"),
                           *_args(tmp_path / "out", results=None, coco_json=None, panoptic_json=bad)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error: ") == 1 and "bad.json" in proc.stderr
