"""Tests of centermask2.evaluation.panoptic: PNG id coding, the results writer, the validating
readers and panoptic quality (against upstream's golden files and hand-computed cases)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from centermask2.data.panoptic_categories import coco_panoptic_separated
from centermask2.errors import InputError, MissingFileError
from centermask2.evaluation.panoptic import (
    PanopticResultsWriter,
    compute_pq,
    convert_segments_info,
    evaluate_panoptic,
    id2rgb,
    read_panoptic_gt,
    read_panoptic_png,
    read_panoptic_results,
    rgb2id,
)
from golden import PANOPTIC

TOL = 1e-4


def _golden_metrics() -> dict:
    return json.loads((PANOPTIC / "metrics_gt.json").read_text())


def _golden_eval(**kwargs) -> dict:
    return evaluate_panoptic(PANOPTIC / "panoptic_results.json", PANOPTIC / "annotations_panoptic_gt.json",
                             PANOPTIC / "panoptic_gt", **kwargs)


# ---------------------------------------------------------------- id coding


def test_rgb2id_and_id2rgb_round_trip():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256**3, size=(7, 9)).astype(np.int32)
    ids[0, 0], ids[0, 1] = 0, 256**3 - 1
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
    back = rgb2id(rgb)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, ids)
    # R + 256 G + 256^2 B
    np.testing.assert_array_equal(id2rgb(np.array([[1 + 256 * 2 + 65536 * 3]])), [[[1, 2, 3]]])
    assert rgb2id(np.array([[[1, 2, 3]]], dtype=np.uint8))[0, 0] == 1 + 512 + 3 * 65536


@pytest.mark.parametrize("bad", [-1, 256**3])
def test_id2rgb_refuses_ids_out_of_range(bad):
    with pytest.raises(ValueError, match=str(bad)):
        id2rgb(np.array([[0, bad]]))


# ---------------------------------------------------------------- golden reproduction


def test_pq_reproduces_upstream_metrics():
    metrics = _golden_eval()
    expected = _golden_metrics()["panoptic_seg"]
    assert list(metrics["panoptic_seg"]) == list(expected)
    for key, value in expected.items():
        assert abs(metrics["panoptic_seg"][key] - value) <= TOL, (key, metrics["panoptic_seg"][key], value)


def test_pq_reproduces_panopticapi_per_class():
    gt = read_panoptic_gt(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt")
    results = read_panoptic_results(PANOPTIC / "panoptic_results.json")
    summary = compute_pq(gt, results).summary()
    expected = json.loads((PANOPTIC / "pq_per_class.json").read_text())
    for group in ("All", "Things", "Stuff"):
        assert summary[group]["n"] == expected[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert abs(summary[group][key] - expected[group][key]) <= TOL, (group, key)
    assert {str(k) for k in summary["per_class"]} == set(expected["per_class"])
    for cid, values in summary["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(values[key] - expected["per_class"][str(cid)][key]) <= TOL, (cid, key)
    assert json.loads(json.dumps(summary))  # JSON-serializable, like pq_per_class.json


def test_per_class_metrics_and_table(caplog):
    caplog.set_level("INFO")
    metrics = _golden_eval()
    per_class = metrics["panoptic_seg_per_class"]
    expected = json.loads((PANOPTIC / "pq_per_class.json").read_text())["per_class"]
    assert per_class["cow"]["PQ"] == pytest.approx(100 * expected["21"]["pq"], abs=TOL)
    assert per_class["broccoli"] == {"PQ": 100.0, "SQ": 100.0, "RQ": 100.0}
    assert "person" not in per_class  # no ground truth and no prediction: not a category of this evaluation
    assert len(per_class) == 22  # pq_per_class.json's n
    assert "Panoptic Evaluation Results" in caplog.text
    assert "| All " in caplog.text and "49.875" in caplog.text  # the table, detectron2's layout


# ---------------------------------------------------------------- hand-computed semantics


CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "s", "isthing": 0},
    {"id": 4, "name": "unused", "isthing": 0},
]


def _segments(ids: np.ndarray, cats: dict[int, int], crowd: set[int] = frozenset(), area: bool = True) -> list[dict]:
    out = []
    for sid, cid in cats.items():
        seg = {"id": sid, "category_id": cid}
        if area:
            seg.update(iscrowd=int(sid in crowd), area=int((ids == sid).sum()))
        out.append(seg)
    return out


def _write_set(folder: Path, name: str, images: list[tuple[int, np.ndarray, list[dict]]]) -> Path:
    """Write ``folder/name.json`` and ``folder/name/<id>.png`` (COCO panoptic layout)."""
    png_dir = folder / name
    png_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for image_id, ids, segments in images:
        Image.fromarray(id2rgb(ids)).save(png_dir / f"{image_id}.png")
        h, w = ids.shape
        data["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        data["annotations"].append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _row(*runs: tuple[int, int]) -> np.ndarray:
    """A 1-pixel-high id map from (id, length) runs."""
    return np.concatenate([np.full(n, v, np.int32) for v, n in runs])[None]


def _hand_case(tmp_path: Path) -> tuple[Path, Path]:
    # image 1, gt: a(1) 6 px | void 2 | s(2) 6 px | crowd a(3) 6 px
    gt1 = _row((1, 6), (0, 2), (2, 6), (3, 6))
    # pred: b(4) 1 | a(1) 4 | void 1 | a(1) 2 on gt void | s(2) 3 | s(3) 3 | a(5) 4 in the crowd | b(6) 2 in the crowd
    pred1 = _row((4, 1), (1, 4), (0, 1), (1, 2), (2, 3), (3, 3), (5, 4), (6, 2))
    # image 2: a perfect stuff segment; a prediction entirely on void is ignored
    gt2 = _row((7, 6), (0, 4))
    pred2 = _row((1, 6), (2, 3), (0, 1))
    gt = _write_set(tmp_path, "gt", [
        (1, gt1, _segments(gt1, {1: 1, 2: 3, 3: 1}, crowd={3})),
        (2, gt2, _segments(gt2, {7: 3})),
    ])
    pred = _write_set(tmp_path, "pred", [
        (1, pred1, _segments(pred1, {1: 1, 2: 3, 3: 3, 4: 2, 5: 1, 6: 2}, area=False)),
        (2, pred2, _segments(pred2, {1: 3, 2: 2}, area=False)),
    ])
    return gt, pred


def test_pq_semantics_by_hand(tmp_path):
    gt, pred = _hand_case(tmp_path)
    summary = compute_pq(read_panoptic_gt(gt), read_panoptic_results(pred)).summary()
    per = summary["per_class"]
    # a: pred 1 vs gt 1: intersection 4, union 6 + 6 - 4 - 2 (the prediction's void pixels) = 6 -> IoU 2/3 matched
    # (with void in the union it would be 4/8, not > 0.5); pred 5 lies in a's crowd region: ignored
    assert per[1] == pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0})
    # b: pred 4 (no b ground truth) and pred 6 (in a crowd region of another category) are false positives;
    # pred 2 of image 2 lies on void: ignored
    assert per[2] == {"pq": 0.0, "sq": 0, "rq": 0.0}
    # s: preds 2 and 3 each have IoU exactly 0.5 with gt 2: not matched (2 fp, 1 fn); image 2 matches (IoU 1)
    assert per[3] == pytest.approx({"pq": 1 / 2.5, "sq": 1.0, "rq": 1 / 2.5})
    assert per[4] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # never seen: left out of the averages
    assert summary["All"] == pytest.approx({"pq": (2 / 3 + 0.4) / 3, "sq": (2 / 3 + 1) / 3, "rq": 1.4 / 3, "n": 3})
    assert summary["Things"] == pytest.approx({"pq": 1 / 3, "sq": 1 / 3, "rq": 0.5, "n": 2})
    assert summary["Stuff"] == pytest.approx({"pq": 0.4, "sq": 1.0, "rq": 0.4, "n": 1})


def _reference_pq(gt_images, pred_images, categories):
    """A literal, loop-per-segment reading of panopticapi's pq_compute_single_core (slow; for checking)."""
    stats = {c["id"]: [0.0, 0, 0, 0] for c in categories}  # iou, tp, fp, fn
    for (gt_ids, gt_segs), (pred_ids, pred_segs) in zip(gt_images, pred_images):
        gmask = {s["id"]: gt_ids == s["id"] for s in gt_segs}
        pmask = {s["id"]: pred_ids == s["id"] for s in pred_segs}
        void = gt_ids == 0
        gm, pm = set(), set()
        for g in gt_segs:
            for p in pred_segs:
                if g["iscrowd"] or g["category_id"] != p["category_id"]:
                    continue
                inter = (gmask[g["id"]] & pmask[p["id"]]).sum()
                union = pmask[p["id"]].sum() + g["area"] - inter - (pmask[p["id"]] & void).sum()
                if inter and inter / union > 0.5:
                    stats[g["category_id"]][0] += inter / union
                    stats[g["category_id"]][1] += 1
                    gm.add(g["id"])
                    pm.add(p["id"])
        crowd = {}
        for g in gt_segs:
            if g["id"] in gm:
                continue
            if g["iscrowd"]:
                crowd[g["category_id"]] = g["id"]
            else:
                stats[g["category_id"]][3] += 1
        for p in pred_segs:
            if p["id"] in pm:
                continue
            ignored = (pmask[p["id"]] & void).sum()
            if p["category_id"] in crowd:
                ignored += (pmask[p["id"]] & gmask[crowd[p["category_id"]]]).sum()
            if ignored / pmask[p["id"]].sum() <= 0.5:
                stats[p["category_id"]][2] += 1
    return stats


def _random_image(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """An id map of ``n`` blobby segments (ids from a random set) over void."""
    ids = np.zeros((h, w), np.int32)
    labels = rng.choice(np.arange(1, 5000), size=n, replace=False)
    for label in labels:
        y, x = rng.integers(0, h), rng.integers(0, w)
        dy, dx = rng.integers(2, h // 2 + 2), rng.integers(2, w // 2 + 2)
        ids[y : y + dy, x : x + dx] = label
    return ids


def test_pq_matches_a_literal_reference_on_random_cases(tmp_path):
    rng = np.random.default_rng(3)
    gt_images, pred_images, gt_entries, pred_entries = [], [], [], []
    for image_id in range(1, 16):
        gt_ids = _random_image(rng, 14, 17, 6)
        # predictions: the ground truth, some segments shifted, merged or relabelled, plus noise
        pred_ids = np.where(rng.random(gt_ids.shape) < 0.15, 0, np.roll(gt_ids, rng.integers(-2, 3), axis=1))
        pred_ids[rng.integers(0, 14), :] = rng.integers(1, 9000)
        gt_segs = [{"id": int(i), "category_id": int(rng.integers(1, 5)), "iscrowd": int(rng.random() < 0.2),
                    "area": int((gt_ids == i).sum())} for i in np.unique(gt_ids) if i]
        pred_segs = [{"id": int(i), "category_id": int(rng.integers(1, 5))} for i in np.unique(pred_ids) if i]
        gt_cat = {s["id"]: s["category_id"] for s in gt_segs}
        for s in pred_segs:  # mostly the right category, so that matches happen
            if s["id"] in gt_cat and rng.random() < 0.8:
                s["category_id"] = gt_cat[s["id"]]
        gt_images.append((gt_ids, gt_segs))
        pred_images.append((pred_ids, pred_segs))
        gt_entries.append((image_id, gt_ids, gt_segs))
        pred_entries.append((image_id, pred_ids, pred_segs))
    gt = read_panoptic_gt(_write_set(tmp_path, "gt", gt_entries))
    pred = read_panoptic_results(_write_set(tmp_path, "pred", pred_entries))
    stat = compute_pq(gt, pred)
    expected = _reference_pq(gt_images, pred_images, CATEGORIES)
    assert sum(v[1] for v in expected.values()) > 10 and sum(v[2] for v in expected.values()) > 10
    for cid, (iou, tp, fp, fn) in expected.items():
        got = stat.category(cid)
        assert (got["tp"], got["fp"], got["fn"]) == (tp, fp, fn), cid
        assert got["iou"] == pytest.approx(iou, abs=1e-12), cid


# ---------------------------------------------------------------- hostile inputs


def _hostile_copy(tmp_path: Path) -> tuple[Path, Path]:
    gt_root = tmp_path / "panoptic_gt"
    shutil.copytree(PANOPTIC / "panoptic_gt", gt_root)
    gt_json = tmp_path / "annotations_panoptic_gt.json"
    shutil.copy(PANOPTIC / "annotations_panoptic_gt.json", gt_json)
    return gt_json, gt_root


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _evaluate(gt_json: Path, gt_root: Path, results: Path = PANOPTIC / "panoptic_results.json") -> dict:
    return evaluate_panoptic(results, gt_json, gt_root)


def test_ground_truth_png_missing(tmp_path):
    gt_json, gt_root = _hostile_copy(tmp_path)
    (gt_root / "000000000002.png").unlink()
    with pytest.raises(MissingFileError, match=r"panoptic ground truth PNG .*000000000002\.png.* not found"):
        _evaluate(gt_json, gt_root)


def test_ground_truth_png_of_the_wrong_size(tmp_path):
    gt_json, gt_root = _hostile_copy(tmp_path)
    png = gt_root / "000000000002.png"
    Image.open(png).crop((0, 0, 500, 512)).save(png)
    with pytest.raises(InputError, match=r"000000000002\.png.* is 500x512 \(width x height\) but image 2 .* is 512x512"):
        _evaluate(gt_json, gt_root)


def test_ground_truth_unknown_category(tmp_path):
    gt_json, gt_root = _hostile_copy(tmp_path)
    _edit_json(gt_json, lambda d: d["annotations"][1]["segments_info"][3].update(category_id=999))
    with pytest.raises(InputError, match=r"image 2.*category_id 999 is not one of the 133 categories"):
        _evaluate(gt_json, gt_root)


def test_ground_truth_png_id_not_in_json(tmp_path):
    gt_json, gt_root = _hostile_copy(tmp_path)
    removed = {}

    def drop(data):
        removed.update(data["annotations"][0]["segments_info"].pop(4))

    _edit_json(gt_json, drop)
    with pytest.raises(InputError, match=rf"000000000001\.png.* segment id\(s\) \[{removed['id']}\] .* not listed"):
        _evaluate(gt_json, gt_root)


def test_ground_truth_json_area_differs_from_png(tmp_path, caplog):
    gt_json, gt_root = _hostile_copy(tmp_path)
    _edit_json(gt_json, lambda d: d["annotations"][0]["segments_info"][0].update(area=136))
    _evaluate(gt_json, gt_root)  # panopticapi uses the JSON area; said, not refused
    assert "area" in caplog.text and "differs" in caplog.text


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0]["segments_info"][0].update(id=1.5), r"'id' 1\.5 .* integer"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(id=float("nan")), r"NaN is not a JSON number"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(id=0), r"'id' 0 .* 1\.\.16777215"),
    (lambda d: d["annotations"][0]["segments_info"][1].update(id=1), r"segment id 1 twice"),
    (lambda d: d["annotations"][0].update(file_name="../x.png"), r"'\.\./x\.png' points outside"),
    (lambda d: d["annotations"][0].update(file_name="/tmp/x.png"), r"'/tmp/x\.png' must be a relative path"),
    (lambda d: d["annotations"][1].update(image_id=1), r"image id\(s\) 1 more than once"),
    (lambda d: d["annotations"][1].update(image_id=77), r"image 77 .* not in its 'images'"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(iscrowd=2), r"'iscrowd' 2 .* 0 or 1"),
    (lambda d: d["annotations"][0]["segments_info"][0].pop("area"), r"no 'area'"),
    (lambda d: d.pop("categories"), r"no 'categories' list"),
])
def test_ground_truth_json_refused(tmp_path, change, message):
    gt_json, gt_root = _hostile_copy(tmp_path)
    _edit_json(gt_json, change)
    with pytest.raises(InputError, match=message):
        read_panoptic_gt(gt_json, gt_root)


def _results_copy(tmp_path: Path) -> Path:
    shutil.copytree(PANOPTIC / "panoptic_results", tmp_path / "pred" / "panoptic_results")
    path = tmp_path / "pred" / "panoptic_results.json"
    shutil.copy(PANOPTIC / "panoptic_results.json", path)
    return path


def test_results_json_segment_absent_from_png(tmp_path):
    results = _results_copy(tmp_path)
    _edit_json(results, lambda d: d["annotations"][1]["segments_info"].append({"id": 4000, "category_id": 92}))
    with pytest.raises(InputError, match=r"image 2.* segment id\(s\) \[4000\] .* not in its PNG"):
        _evaluate(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", results)


def test_results_png_id_not_in_json(tmp_path):
    results = _results_copy(tmp_path)
    _edit_json(results, lambda d: d["annotations"][1]["segments_info"].pop(0))
    with pytest.raises(InputError, match=r"segment id\(s\) \[1\] .* not listed"):
        _evaluate(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", results)


def test_results_unknown_category_and_missing_image(tmp_path):
    results = _results_copy(tmp_path)
    _edit_json(results, lambda d: d["annotations"][1]["segments_info"][0].update(category_id=12))
    with pytest.raises(InputError, match=r"image 2, segment 0: category_id 12 is not one of the 133 categories"):
        _evaluate(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", results)
    _edit_json(results, lambda d: d.pop("categories"))  # then it is checked against the ground truth's
    with pytest.raises(InputError, match=r"image 2 has category_id 12 which is not a category of the ground truth"):
        _evaluate(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", results)
    results = _results_copy(tmp_path / "again")
    _edit_json(results, lambda d: d["annotations"].pop(1))
    with pytest.raises(InputError, match=r"no prediction for image id\(s\) 2"):
        _evaluate(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", results)


def test_results_png_of_another_size(tmp_path):
    results = _results_copy(tmp_path)
    png = results.parent / "panoptic_results" / "000000000001.png"
    Image.open(png).resize((741, 501)).save(png)
    with pytest.raises(InputError, match=r"000000000001\.png.* is 741x501 .* 741x500"):
        _evaluate(PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt", results)


def test_png_that_is_not_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(path)
    with pytest.raises(InputError, match=r"mode 'L'.*RGB"):
        read_panoptic_png(path, (4, 5))


# ---------------------------------------------------------------- writer


def _contiguous_segments(segments_info: list[dict]) -> list[dict]:
    """Upstream's dataset-id segments back as detectron2's combine_semantic_and_instance_outputs gives them."""
    meta = coco_panoptic_separated()
    out = []
    for seg in segments_info:
        seg = dict(seg)
        if "instance_id" in seg:
            seg.update(category_id=meta.thing_dataset_ids.index(seg["category_id"]), isthing=True)
        else:
            seg.update(category_id=meta.stuff_dataset_ids.index(seg["category_id"]), isthing=False)
        out.append(seg)
    return out


def test_writer_round_trip(tmp_path):
    golden = json.loads((PANOPTIC / "panoptic_results.json").read_text())
    writer = PanopticResultsWriter(tmp_path / "out dir")
    for ann in golden["annotations"]:
        ids = rgb2id(np.asarray(Image.open(PANOPTIC / "panoptic_results" / ann["file_name"])))
        sem = np.asarray(Image.open(PANOPTIC / "sem_seg_results" / ann["file_name"]))
        written = writer.add(ann["image_id"], f"images/{Path(ann['file_name']).stem}.jpg", ids,
                             _contiguous_segments(ann["segments_info"]), sem_seg=sem)
        assert written == ann
        np.testing.assert_array_equal(read_panoptic_png(tmp_path / "out dir" / "panoptic_results" / ann["file_name"],
                                                        ids.shape), ids)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out dir" / "sem_seg_results" /
                                                            ann["file_name"])), sem)
    path = writer.finish(base=PANOPTIC / "annotations_panoptic_gt.json")
    assert path == tmp_path / "out dir" / "panoptic_results.json"
    assert json.loads(path.read_text()) == golden  # key by key, as COCOPanopticEvaluator writes it
    assert not [p for p in (tmp_path / "out dir").rglob(".*")]  # no temp files left
    # what it wrote evaluates like upstream's own files
    metrics = evaluate_panoptic(path, PANOPTIC / "annotations_panoptic_gt.json", PANOPTIC / "panoptic_gt")
    assert metrics["panoptic_seg"] == pytest.approx(_golden_metrics()["panoptic_seg"], abs=TOL)


def test_writer_without_ground_truth_json(tmp_path):
    writer = PanopticResultsWriter(tmp_path)
    ids = _row((1, 3), (0, 1), (2, 2))
    writer.add(5, "a/b/x.jpg", ids, [
        {"id": 1, "isthing": True, "category_id": 0, "score": 0.9, "instance_id": 0},
        {"id": 2, "isthing": False, "category_id": 53, "area": 2},
    ])
    data = json.loads(writer.finish().read_text())
    assert data["annotations"] == [{"image_id": 5, "file_name": "x.png", "segments_info": [
        {"id": 1, "category_id": 1, "score": 0.9, "instance_id": 0}, {"id": 2, "category_id": 200, "area": 2}]}]
    assert data["images"] == [{"id": 5, "file_name": "x.jpg", "height": 1, "width": 6}]
    assert len(data["categories"]) == 133 and data["categories"][-1] == {"id": 200, "name": "rug-merged", "isthing": 0}


def test_writer_refuses_inconsistent_segments(tmp_path):
    writer = PanopticResultsWriter(tmp_path)
    ids = _row((1, 3), (2, 2))
    with pytest.raises(ValueError, match=r"segment id\(s\) \[2\] .* not listed"):
        writer.add(1, "x.jpg", ids, [{"id": 1, "isthing": True, "category_id": 0}])
    with pytest.raises(ValueError, match="stuff class 0"):
        writer.add(1, "x.jpg", ids, [{"id": 1, "isthing": True, "category_id": 0},
                                     {"id": 2, "isthing": False, "category_id": 0}])


def test_convert_segments_info_as_detectron2():
    meta = coco_panoptic_separated()
    segments = [{"id": 1, "isthing": True, "category_id": 79, "score": 0.5, "instance_id": 3},
                {"id": 2, "isthing": False, "category_id": 1, "area": 10},
                {"id": 3, "category_id": 200}]  # no isthing: already a dataset id
    converted = convert_segments_info(segments, meta)
    assert converted == [{"id": 1, "category_id": 90, "score": 0.5, "instance_id": 3},
                         {"id": 2, "category_id": 92, "area": 10}, {"id": 3, "category_id": 200}]
    assert "isthing" in segments[0]  # the caller's dicts are left alone
    with pytest.raises(InputError, match="thing class 80"):
        convert_segments_info([{"id": 1, "isthing": True, "category_id": 80}], meta)


def test_summary_with_an_empty_group(tmp_path):
    gt1 = _row((1, 4))
    gt = _write_set(tmp_path, "gt", [(1, gt1, _segments(gt1, {1: 3}))])
    pred = _write_set(tmp_path, "pred", [(1, gt1, _segments(gt1, {1: 3}, area=False))])
    metrics = evaluate_panoptic(pred, gt)
    assert metrics["panoptic_seg"]["PQ"] == 100.0 and metrics["panoptic_seg"]["PQ_st"] == 100.0
    assert math.isnan(metrics["panoptic_seg"]["PQ_th"])  # no thing category seen: undefined (panopticapi divides by 0)
