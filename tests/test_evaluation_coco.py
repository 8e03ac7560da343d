"""Tests of centermask2.evaluation and the evaluation mode of postprocess_bin_outputs.py."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from centermask2.evaluation import (
    evaluate_coco,
    instances_to_coco_json,
    load_coco_categories,
    load_coco_results,
)
from golden import CASES, LITE, ROOT, root_script

postprocess_bin_outputs = root_script("postprocess_bin_outputs.py")
VARIANTS = [
    (case, suffix)
    for case in ("V_39", LITE, "V_39_dcn")
    for suffix in ("", "_pad1344")
]


def _assert_metrics_close(actual: dict, expected: dict, tol: float = 0.01) -> None:
    assert set(actual) == set(expected)
    for group, values in expected.items():
        assert set(actual[group]) == set(values), group
        for name, value in values.items():
            assert abs(actual[group][name] - value) <= tol, (group, name, actual[group][name], value)


@pytest.mark.parametrize("case, suffix", VARIANTS)
def test_evaluate_reproduces_golden_metrics(case, suffix):
    results = json.loads((CASES[case] / f"coco_instances_results{suffix}.json").read_text())
    before = copy.deepcopy(results)
    metrics = evaluate_coco(results, CASES[case] / f"annotations_gt{suffix}.json")
    expected = json.loads((CASES[case] / f"metrics_gt{suffix}.json").read_text())
    _assert_metrics_close(metrics, expected)
    assert results == before  # the caller's results are not modified


def test_evaluate_writes_outputs_atomically(tmp_path):
    case = CASES[LITE]
    results = load_coco_results(case / "coco_instances_results.json")
    out = tmp_path / "out dir"
    metrics = evaluate_coco(results, case / "annotations_gt.json", output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # no temp files left, results not copied
    assert json.loads((out / "metrics.json").read_text()) == metrics


def _square_mask(h: int, w: int, y0: int, x0: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def _tiny_dataset(tmp_path: Path) -> Path:
    gt_mask = _square_mask(100, 100, 10, 10, 40)
    rle = mask_util.encode(np.asfortranarray(gt_mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    ann = {
        "images": [{"id": 7, "file_name": "a.png", "height": 100, "width": 100}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],  # unsorted on purpose
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "segmentation": rle, "area": 1600.0,
             "bbox": [10.0, 10.0, 40.0, 40.0], "iscrowd": 0},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path


def _result(mask: np.ndarray, score: float, mask_score: float, category_id: int = 5) -> dict:
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    return instances_to_coco_json(
        {
            "boxes": boxes,
            "scores": torch.tensor([score]),
            "classes": torch.tensor([{2: 0, 5: 1}[category_id]]),
            "masks": torch.from_numpy(mask)[None],
            "mask_scores": torch.tensor([mask_score]),
        },
        7,
        [2, 5],
    )[0]


def test_segm_ranks_by_mask_score(tmp_path):
    ann = _tiny_dataset(tmp_path)
    good = _square_mask(100, 100, 10, 10, 40)
    bad = _square_mask(100, 100, 60, 60, 30)  # no overlap with the ground truth
    # Box score prefers the good mask, mask_score the bad one.
    results = [_result(good, 0.9, 0.1), _result(bad, 0.1, 0.9)]
    metrics = evaluate_coco(results, ann)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)  # both boxes are perfect
    # Ranked by mask_score, the false positive comes first: precision 1/2 at full recall.
    assert metrics["segm"]["AP"] == pytest.approx(50.0)
    assert metrics["segm_per_category"] == {"cat": pytest.approx(50.0)}  # "dog" has no GT
    assert metrics["segm"]["APl"] == -100.0  # no large ground truth: undefined


def test_evaluate_edge_cases(tmp_path):
    ann = _tiny_dataset(tmp_path)
    empty = evaluate_coco([], ann)
    assert set(empty) == {"bbox", "bbox_per_category"}
    assert all(math.isnan(v) for v in empty["bbox"].values())
    boxes_only = [{"image_id": 7, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.5}]
    metrics = evaluate_coco(boxes_only, ann)
    assert set(metrics) == {"bbox", "bbox_per_category"}
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="image ids"):
        evaluate_coco([dict(boxes_only[0], image_id=99)], ann)


# pycocotools' decode trips a numpy 2 DeprecationWarning inside pycocotools itself.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_instances_to_coco_json_round_trip():
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:12, 20:33] = True
    mask[20, 1] = True
    result = {
        "boxes": torch.tensor([[20.0, 5.0, 33.0, 21.0], [0.5, 1.25, 2.0, 3.0]]),
        "scores": torch.tensor([0.75, 0.25]),
        "classes": torch.tensor([1, 0]),
        "masks": torch.stack([torch.from_numpy(mask), torch.zeros(30, 40, dtype=torch.bool)]),
        "mask_scores": torch.tensor([0.5, 0.125]),
    }
    records = json.loads(json.dumps(instances_to_coco_json(result, 3, {0: 11, 1: 4})))
    assert [list(r) for r in records] == [
        ["image_id", "category_id", "bbox", "score", "segmentation", "mask_score"]
    ] * 2
    first, second = records
    assert (first["image_id"], first["category_id"], second["category_id"]) == (3, 4, 11)
    assert first["bbox"] == [20.0, 5.0, 13.0, 16.0] and second["bbox"] == [0.5, 1.25, 1.5, 1.75]
    assert (first["score"], first["mask_score"]) == (0.75, 0.5)
    assert isinstance(first["segmentation"]["counts"], str)
    assert first["segmentation"]["size"] == [30, 40]
    np.testing.assert_array_equal(mask_util.decode(first["segmentation"]).astype(bool), mask)
    assert not mask_util.decode(second["segmentation"]).any()

    no_masks = instances_to_coco_json({k: result[k] for k in ("boxes", "scores", "classes")}, 3, [11, 4])
    assert list(no_masks[0]) == ["image_id", "category_id", "bbox", "score"]
    assert instances_to_coco_json({"boxes": torch.zeros(0, 4), "scores": [], "classes": []}, 3, [1]) == []
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        instances_to_coco_json({k: result[k] for k in ("boxes", "scores", "classes")}, 3, [11])


def test_load_coco_categories_sorts_ids(tmp_path):
    ids, names = load_coco_categories(_tiny_dataset(tmp_path))
    assert ids == [2, 5] and names == ["dog", "cat"]
    ids, names = load_coco_categories(CASES["V_39"] / "annotations.json")
    assert len(ids) == 80 and ids[:3] == [1, 2, 3] and names[0] == "person"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_categories(tmp_path / "nope.json")


def test_load_coco_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_results(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="annotation file, not a results list"):
        load_coco_results(CASES["V_39"] / "annotations_gt.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list"):
        load_coco_results(bad)
    bad.write_text('[{"image_id": 1}]')
    with pytest.raises(ValueError, match="Entry 0"):
        load_coco_results(bad)


# ---------------------------------------------------------------- the script


def test_script_main_evaluates(tmp_path, capsys):
    case = CASES["V_39"]
    out = tmp_path / "eval out"
    rc = postprocess_bin_outputs.main(
        ["--results", str(case / "coco_instances_results.json"),
         "--coco-json", str(case / "annotations_gt.json"), "--output-dir", str(out)]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _assert_metrics_close(metrics, json.loads((case / "metrics_gt.json").read_text()))
    printed = capsys.readouterr().out
    assert "bbox" in printed and "segm" in printed and "21.832" in printed


def test_script_main_errors(tmp_path, capsys, caplog):
    def said() -> str:  # the one-line error goes to the log (stderr when run as a script)
        text = capsys.readouterr().err + caplog.text
        caplog.clear()
        return text

    case = CASES["V_39"]
    assert postprocess_bin_outputs.main(
        ["--results", str(tmp_path / "none.json"), "--coco-json", str(case / "annotations_gt.json")]
    ) == 1
    assert "none.json" in said()
    assert postprocess_bin_outputs.main(
        ["--results", str(case / "annotations_gt.json"), "--coco-json", str(case / "annotations_gt.json")]
    ) == 1
    assert "not a results list" in said()
    assert postprocess_bin_outputs.main(["--outputs", str(tmp_path), "--info", "x", "--model", "y"]) == 2
    assert "--output-dir" in said()  # the .bin mode needs all of its arguments
    assert postprocess_bin_outputs.main(["--results", str(case / "coco_instances_results.json")]) == 2
    assert "--coco-json" in said()


def test_script_subprocess(tmp_path):
    case = CASES[LITE]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "postprocess_bin_outputs.py"),
         "--results", str(case / "coco_instances_results_pad1344.json"),
         "--coco-json", str(case / "annotations_gt_pad1344.json"), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Per-category segm AP" in proc.stderr  # the library's log tables
    _assert_metrics_close(
        json.loads((tmp_path / "metrics.json").read_text()),
        json.loads((case / "metrics_gt_pad1344.json").read_text()),
    )


def test_box_only_ground_truth_scores_bbox_and_skips_segm(tmp_path, caplog):
    case = CASES["V_39"]
    gt = json.loads((case / "annotations_gt.json").read_text())
    for ann in gt["annotations"]:
        ann.pop("segmentation", None)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = json.loads((case / "coco_instances_results.json").read_text())
    metrics = evaluate_coco(results, tmp_path / "gt.json")
    want = json.loads((case / "metrics_gt.json").read_text())
    assert "segm" not in metrics and abs(metrics["bbox"]["AP"] - want["bbox"]["AP"]) < 0.01
    assert "segm skipped" in caplog.text


@pytest.mark.parametrize(
    "change,message",
    [
        ({"bbox": [1, 2, 3]}, "'bbox' must be 4 finite numbers"),
        ({"bbox": [1, 2, "3", 4]}, "'bbox' must be 4 finite numbers"),
        ({"score": "high"}, "'score' must be a finite number"),
        # NaN / Infinity are not JSON: the bounded reader refuses the file before any entry is read
        ({"score": float("nan")}, "NaN is not a JSON number"),
        ({"mask_score": float("inf")}, "Infinity is not a JSON number"),
        ({"category_id": "person"}, "'category_id' must be an integer"),
        ({"image_id": 1.5}, "'image_id' must be an integer"),
    ],
)
def test_malformed_result_values_are_refused_by_entry(tmp_path, change, message):
    case = CASES["V_39"]
    results = json.loads((case / "coco_instances_results.json").read_text())
    results[3].update(change)
    (tmp_path / "r.json").write_text(json.dumps(results))
    where = "" if "JSON number" in message else "Entry 3 .*"
    with pytest.raises(ValueError, match=f"{where}{message}"):
        load_coco_results(tmp_path / "r.json")
