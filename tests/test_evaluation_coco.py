"""Tests of centermask2.evaluation and the evaluation mode of postprocess_bin_outputs.py."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
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
    load_coco_ground_truth,
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
    # bad input files are bad input files in every mode (exit 2, as the panoptic evaluation-only inputs)
    assert postprocess_bin_outputs.main(
        ["--results", str(tmp_path / "none.json"), "--coco-json", str(case / "annotations_gt.json")]
    ) == 2
    assert "none.json" in said()
    assert postprocess_bin_outputs.main(
        ["--results", str(case / "annotations_gt.json"), "--coco-json", str(case / "annotations_gt.json")]
    ) == 2
    assert "not a results list" in said()
    assert postprocess_bin_outputs.main(
        ["--results", str(case / "coco_instances_results.json"), "--coco-json", str(tmp_path / "none.json")]
    ) == 2
    assert "none.json" in said()
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


# ---------------------------------------------------------------- files other tools write


def _golden(case="V_39"):
    gt = json.loads((CASES[case] / "annotations_gt.json").read_text())
    results = json.loads((CASES[case] / "coco_instances_results.json").read_text())
    return gt, results, json.loads((CASES[case] / "metrics_gt.json").read_text())


def _write(tmp_path, name, content):
    (tmp_path / name).write_text(json.dumps(content))
    return tmp_path / name


def test_ground_truth_without_area_and_iscrowd_scores_the_same(tmp_path, caplog):
    """pycocotools needs them; detectron2 fills area from the mask (or box) and iscrowd 0: so do we."""
    gt, results, want = _golden()
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
    with caplog.at_level(logging.INFO):
        metrics = evaluate_coco(results, _write(tmp_path, "gt.json", gt))
    _assert_metrics_close(metrics, want)
    assert "34 annotation(s) without 'area'" in caplog.text


def test_ground_truth_images_without_size_take_it_from_their_masks(tmp_path):
    gt, results, _ = _golden()
    gt["annotations"] = [a for a in gt["annotations"] if isinstance(a["segmentation"], dict)]  # RLE only
    with_size = evaluate_coco(results, _write(tmp_path, "sized.json", gt))
    for image in gt["images"]:
        del image["height"], image["width"]
    _assert_metrics_close(evaluate_coco(results, _write(tmp_path, "unsized.json", gt)), with_size)


def test_ground_truth_polygons_need_the_image_size(tmp_path):
    gt, results, _ = _golden()
    for image in gt["images"]:
        del image["height"], image["width"]
    evaluate_coco(results, _write(tmp_path, "mixed.json", gt))  # its RLE masks give image 1's size
    gt["annotations"] = [a for a in gt["annotations"] if isinstance(a["segmentation"], list)]
    with pytest.raises(ValueError, match=r"image id 1 has no 'height'/'width'.*polygon"):
        evaluate_coco(results, _write(tmp_path, "gt.json", gt))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda gt: gt["annotations"][0].update(category_id=999), "annotation id 1 has category_id 999, which"),
        (lambda gt: gt["annotations"][0].update(image_id=42), "annotation id 1 has image_id 42, which 'images' does"),
        (lambda gt: gt["annotations"][1].update(id=1), "annotation id 1 appears more than once"),
        (lambda gt: gt["annotations"][0].pop("id"), "annotation 0 has no integer 'id'"),
        (lambda gt: gt["annotations"][0].update(bbox=[1, 2, "3", 4]), "annotation id 1: 'bbox' must be"),
        (lambda gt: gt["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "NaN is not a JSON number"),
        (lambda gt: gt["annotations"][0].update(iscrowd=2), "annotation id 1: 'iscrowd' must be 0 or 1"),
        (lambda gt: gt["annotations"][0].update(segmentation={"size": [300, 451], "counts": "zzzz"}),
         "annotation id 1: 'segmentation' is not a valid RLE"),
        (lambda gt: gt["annotations"][0].update(segmentation={"size": [30, 45], "counts": [1350]}),
         "annotation id 1: its 'segmentation' is 30x45 but image 1 is 300x451"),
        (lambda gt: gt["annotations"][0].update(segmentation=[[1, 2, "x", 4, 5, 6]]),
         "annotation id 1: 'segmentation' must be"),
        (lambda gt: gt.update(annotations={"id": 1}), "'annotations' must be a list"),
    ],
)
def test_malformed_ground_truth_is_refused_by_name(tmp_path, change, message):
    gt, results, _ = _golden()
    change(gt)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_coco_ground_truth(_write(tmp_path, "gt.json", gt))


def test_ground_truth_box_from_the_mask_when_missing(tmp_path):
    gt, _, _ = _golden()
    want = gt["annotations"][0]["bbox"]
    del gt["annotations"][0]["bbox"]
    loaded = load_coco_ground_truth(_write(tmp_path, "gt.json", gt))
    assert loaded["annotations"][0]["bbox"] == pytest.approx(want)


def test_polygon_and_uncompressed_results_are_converted(tmp_path, caplog):
    """Results files of other tools: polygon and uncompressed-RLE masks score as the same masks in RLE."""
    gt, _, _ = _golden()
    h, w = 300, 451
    polygons = [[[20.0, 30.0, 120.0, 30.0, 120.0, 90.0, 20.0, 90.0]], [[140.0, 70.0, 161.0, 70.0, 161.0, 116.0]]]
    rles = [mask_util.merge(mask_util.frPyObjects(p, h, w)) for p in polygons]
    base = [{"image_id": 1, "category_id": 16, "bbox": [20, 30, 100, 60], "score": 0.9, "mask_score": 0.8},
            {"image_id": 1, "category_id": 16, "bbox": [140, 70, 21, 46], "score": 0.7, "mask_score": 0.6}]
    as_rle = [{**r, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}} for r, rle in zip(base, rles)]
    as_polygon = [{**r, "segmentation": p} for r, p in zip(base, polygons)]
    uncompressed = [{**r, "segmentation": {"size": [h, w], "counts": _uncompressed(mask_util.decode(rle))}}
                    for r, rle in zip(base, rles)]
    want = evaluate_coco(as_rle, CASES["V_39"] / "annotations_gt.json")
    with caplog.at_level(logging.INFO):
        results = load_coco_results(_write(tmp_path, "poly.json", as_polygon))
        _assert_metrics_close(evaluate_coco(results, CASES["V_39"] / "annotations_gt.json"), want)
    assert "2 polygon segmentation(s) converted to RLE" in caplog.text
    results = load_coco_results(_write(tmp_path, "unc.json", uncompressed))
    _assert_metrics_close(evaluate_coco(results, CASES["V_39"] / "annotations_gt.json"), want)


def _uncompressed(mask):
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


@pytest.mark.parametrize(
    "segmentation,message",
    [
        ({"size": [48, 64], "counts": "zzzz"}, "'segmentation' is not a valid RLE"),
        ({"size": [48, 64], "counts": "0"}, "'segmentation' is not a valid RLE"),
        ({"size": [48, 64], "counts": ""}, "'segmentation' is not a valid RLE"),
        ({"size": [48, 64], "counts": "\x7f\x7f"}, "'segmentation' is not a valid RLE"),
        ({"size": [48, 64], "counts": [3000, 72, 1]}, "'segmentation' is not a valid RLE"),
        ({"size": [48, 64], "counts": [3000, -1, 73]}, "'segmentation' is not a valid RLE"),
        ({"size": [100000, 100000], "counts": [10**10]}, "'segmentation' is not a valid RLE"),
        ({"size": [48], "counts": "0"}, "'segmentation' is not a valid RLE"),
        ({"counts": "0"}, "'segmentation' is not a valid RLE"),
        ("mask", "'segmentation' must be an RLE dict"),
        ([[1, 2, "x", 4, 5, 6]], "'segmentation' must be an RLE dict"),
    ],
)
def test_results_masks_that_do_not_decode_are_refused(tmp_path, segmentation, message):
    record = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5, "segmentation": segmentation}
    good = {**record, "segmentation": {"size": [48, 64], "counts": mask_util.encode(
        np.asfortranarray(np.ones((48, 64), np.uint8)))["counts"].decode()}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps([good, good, record]))
    with pytest.raises(ValueError, match=re.escape("Entry 2 of results file") + ".*" + re.escape(message)):
        load_coco_results(path)


def test_rle_validation_agrees_with_pycocotools_on_real_masks():
    from centermask2.evaluation.rle import rle_problems

    rng = np.random.default_rng(0)
    masks = [(rng.random((31, 47)) > p).astype(np.uint8) for p in (0.0, 0.3, 0.5, 0.9, 1.0)]
    masks.append(np.zeros((1000, 3000), np.uint8))
    masks[-1][10:900, 5:2500] = 1
    rles = [mask_util.encode(np.asfortranarray(m)) for m in masks]
    assert rle_problems([{"size": r["size"], "counts": r["counts"].decode()} for r in rles]) == [""] * len(rles)
    truncated = {"size": rles[1]["size"], "counts": rles[1]["counts"].decode()[:-1]}
    assert rle_problems([truncated])[0]


def test_results_of_unknown_categories_and_other_sizes_are_refused(tmp_path):
    _, results, _ = _golden()
    results[4]["category_id"] = 999
    with pytest.raises(ValueError, match="Results refer to category ids \\[999\\]"):
        evaluate_coco(results, CASES["V_39"] / "annotations_gt.json")
    _, results, _ = _golden()
    small = mask_util.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    results[2]["segmentation"] = {"size": [10, 10], "counts": small["counts"].decode()}
    with pytest.raises(ValueError, match="entry 2: its 'segmentation' is 10x10 but image 1 is 300x451"):
        evaluate_coco(results, CASES["V_39"] / "annotations_gt.json")


@pytest.mark.parametrize("key", ["segmentation", "mask_score"])
def test_results_where_only_some_records_have_masks_are_refused(key):
    _, results, _ = _golden()
    del results[5][key]
    with pytest.raises(ValueError, match=f"1 of 50 detections have no '{key}' \\(entry 5"):
        evaluate_coco(results, CASES["V_39"] / "annotations_gt.json")
