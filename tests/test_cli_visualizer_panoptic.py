"""Stuff regions of panoptic sources in the visualizer: drawn under the instances, named, compared,
off with --no-stuff; instance-only sources unchanged; bad panoptic files named."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import centermask2.cli.visualizer as visualizer
from centermask2.data.panoptic_categories import coco_panoptic_separated
from centermask2.data.transforms import read_image
from centermask2.evaluation import load_coco_results
from centermask2.evaluation.panoptic import PANOPTIC_RESULTS_NAME, read_panoptic_png
from centermask2.visualization import draw_instances, filter_records
from centermask2.visualization.panoptic import (
    MIN_LABEL_AREA,
    draw_stuff,
    match_stuff,
    stuff_color,
    stuff_display_name,
    stuff_label_point,
)
from golden import CASES

CASE = CASES["panoptic_V_39"]
STEMS = ("000000000001", "000000000002")
CATEGORIES = coco_panoptic_separated().categories
NAMES = {cid: name for cid, (name, _) in CATEGORIES.items()}


# ---------------------------------------------------------------- drawing


def _scene():
    """100x120 gray image; segments 1 (stuff 187 sky, top), 2 (thing 1 person), 3 (stuff 149 road, bottom), void."""
    image = np.full((100, 120, 3), 90, np.uint8)
    ids = np.zeros((100, 120), np.int32)
    ids[:40] = 1
    ids[40:70, 30:90] = 2
    ids[70:] = 3
    ids[70:, :10] = 0
    return image, ids, [(1, 187), (3, 149)]


def test_stuff_is_filled_only_inside_stuff_regions_and_named():
    image, ids, segments = _scene()
    plain, none = draw_stuff(image, ids, segments, NAMES, labels=False)
    assert none == []
    stuff = np.isin(ids, [1, 3])
    for sid, cid in segments:
        expected = 90 * 0.6 + np.array(stuff_color(cid), np.float32) * 0.4
        assert np.abs(plain[ids == sid].astype(np.float32) - expected).max() <= 1.0
    assert (plain[~stuff] == 90).all()  # things and void untouched
    labelled, labels = draw_stuff(image, ids, segments, NAMES)
    assert [(lab.category_id, lab.text) for lab in labels] == [(187, "sky"), (149, "road")]
    inside = np.zeros(ids.shape, bool)
    for lab in labels:
        x, y = lab.point
        assert ids[y, x] in (1, 3)
        x0, y0, x1, y1 = lab.box
        assert x0 <= x < x1 and y0 <= y < y1
        inside[y0:y1, x0:x1] = True
        assert (labelled[y0:y1, x0:x1] >= 200).all(axis=-1).any()  # white text
    differs = (labelled != plain).any(axis=-1)
    assert differs.any() and not (differs & ~inside).any()


def test_draw_stuff_keeps_the_image_without_stuff_and_converts_gray():
    image, ids, _ = _scene()
    out, labels = draw_stuff(image, ids, [], NAMES)
    assert labels == [] and (out == image).all() and out is not image
    out, _ = draw_stuff(image[:, :, 0], ids, [(1, 187)], NAMES)
    assert out.shape == (100, 120, 3)
    with pytest.raises(ValueError, match="does not fit"):
        draw_stuff(image, ids[:50], [(1, 187)], NAMES)


def test_tiny_regions_are_filled_but_not_named():
    image = np.zeros((50, 50, 3), np.uint8)
    ids = np.zeros((50, 50), np.int32)
    ids[:5, :5] = 4  # 25 pixels < MIN_LABEL_AREA
    assert 25 < MIN_LABEL_AREA
    out, labels = draw_stuff(image, ids, [(4, 92)], NAMES)
    assert labels == [] and out[:5, :5].any() and not out[5:].any()


def test_label_point_is_deep_inside_the_region():
    m = np.zeros((60, 80), bool)
    m[10:50, 20:60] = True
    x, y = stuff_label_point(m)
    assert abs(x - 39.5) <= 1 and abs(y - 29.5) <= 1
    ring = np.ones((60, 60), bool)
    ring[10:50, 10:50] = False  # the centroid (30, 30) is outside this region
    x, y = stuff_label_point(ring)
    assert ring[y, x]
    assert stuff_label_point(np.zeros((5, 5), bool)) is None


def test_display_names():
    assert [stuff_display_name(n) for n in ("sky-other-merged", "door-stuff", "wall-brick", "banner")] == [
        "sky", "door", "wall-brick", "banner"]


def test_match_stuff_needs_same_category_and_iou_over_half():
    a = np.zeros((10, 10), np.int32)
    a[:5] = 1
    a[5:] = 2
    b = np.zeros((10, 10), np.int32)
    b[:6] = 7  # IoU 50/60 with segment 1
    b[6:] = 8  # IoU 40/50 with segment 2, but another category
    s = match_stuff(a, [(1, 187), (2, 149)], b, [(7, 187), (8, 148)])
    assert (s.left, s.right, s.matched) == (2, 2, 1)
    assert s.format() == "2 vs 2 stuff segments, 1 matched"
    b[:] = 7
    b[:2] = 9  # IoU of 1 and 7: 30/100
    assert match_stuff(a, [(1, 187)], b, [(7, 187), (9, 187)]).matched == 0
    assert match_stuff(a, [], b, [(7, 187)]).format() == "0 vs 1 stuff segments, 0 matched"


# ---------------------------------------------------------------- the script on upstream's results


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A tester.py output folder: upstream's instance results, panoptic_results.json and its PNGs."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(CASE / "coco_instances_results.json", out)
    shutil.copy(CASE / PANOPTIC_RESULTS_NAME, out)
    shutil.copytree(CASE / "panoptic_results", out / "panoptic_results")
    return out


def _draw(results: Path, out: Path, *extra: str) -> int:
    return visualizer.main(["--results", str(results), "--images", str(CASE / "images"), "--output-dir", str(out),
                            "--no-progress", *extra])


def _stuff(stem: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    data = json.loads((CASE / PANOPTIC_RESULTS_NAME).read_text())
    ann = next(a for a in data["annotations"] if a["file_name"] == f"{stem}.png")
    segments = [(s["id"], s["category_id"]) for s in ann["segments_info"] if not CATEGORIES[s["category_id"]][1]]
    return read_panoptic_png(CASE / "panoptic_results" / f"{stem}.png"), segments


def _instances_only(stem: str, base: np.ndarray | None = None) -> np.ndarray:
    image = read_image(CASE / "images" / f"{stem}.png", format="BGR")
    records = [r for r in load_coco_results(CASE / "coco_instances_results.json") if r["image_id"] == int(stem)]
    return draw_instances(image if base is None else base, filter_records(records, 0.5), NAMES)


def test_upstream_panoptic_results_draw_stuff_under_the_instances(run_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert visualizer.PANOPTIC_NAME == PANOPTIC_RESULTS_NAME
    assert _draw(run_dir / "coco_instances_results.json", tmp_path / "stuff") == 0
    assert "stuff from" in caplog.text
    assert _draw(run_dir / "coco_instances_results.json", tmp_path / "plain", "--no-stuff") == 0
    for stem in STEMS:
        pic = cv2.imread(str(tmp_path / "stuff" / f"{stem}.png"))
        plain = cv2.imread(str(tmp_path / "plain" / f"{stem}.png"))
        assert (plain == _instances_only(stem)).all()  # --no-stuff: the instance-only picture
        ids, segments = _stuff(stem)
        assert len(segments) >= 5
        image = read_image(CASE / "images" / f"{stem}.png", format="BGR")
        under, labels = draw_stuff(image, ids, segments, NAMES)
        assert (pic == _instances_only(stem, under)).all()  # stuff first, the instances on top
        # the pictures differ inside the stuff regions (and the name boxes, which lie on them), nowhere else
        stuff = np.isin(ids, [sid for sid, _ in segments])
        boxes = np.zeros_like(stuff)
        for lab in labels:
            x0, y0, x1, y1 = lab.box
            boxes[y0:y1, x0:x1] = True
            assert stuff[lab.point[1], lab.point[0]]
        differs = (pic != plain).any(axis=-1)
        assert not (differs & ~stuff & ~boxes).any()
        # ... and everywhere in them that the instances' labels, boxes and outlines (opaque) leave visible
        opaque = (_instances_only(stem, np.zeros_like(image)) == _instances_only(stem, np.full_like(image, 255))).all(-1)
        assert differs[stuff & ~opaque].mean() > 0.99
        # every named region's label is written: white text on a dark box, where no instance label covers it
        assert len(labels) == sum(int((ids == sid).sum()) >= MIN_LABEL_AREA for sid, _ in segments)
        shown = [lab for lab in labels if (pic[lab.box[1]:lab.box[3], lab.box[0]:lab.box[2]] >= 230).all(-1).any()]
        assert len(shown) >= len(labels) - 1


def test_explicit_panoptic_results_and_instance_only_files(run_dir, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(CASE / "coco_instances_results.json", alone)
    # no panoptic files next to it: exactly the instance-only picture, as before
    assert _draw(alone / "coco_instances_results.json", tmp_path / "a") == 0
    assert _draw(run_dir / "coco_instances_results.json", tmp_path / "b") == 0
    assert _draw(alone / "coco_instances_results.json", tmp_path / "c", "--panoptic-results",
                 str(run_dir / PANOPTIC_RESULTS_NAME)) == 0
    for stem in STEMS:
        a, b, c = (cv2.imread(str(tmp_path / d / f"{stem}.png")) for d in "abc")
        assert (a == _instances_only(stem)).all()
        assert (b == c).all() and (a != b).any()


def test_compare_upstream_with_itself(run_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    results = run_dir / "coco_instances_results.json"
    assert _draw(results, tmp_path / "cmp", "--compare", str(results)) == 0
    total = 0
    for stem in STEMS:
        ids, segments = _stuff(stem)
        n = len({sid for sid, _ in segments} & set(np.unique(ids).tolist()))
        total += n
        assert f"{n} vs {n} stuff segments, {n} matched" in caplog.text
        pic = cv2.imread(str(tmp_path / "cmp" / f"{stem}_compare.png"))
        w = cv2.imread(str(CASE / "images" / f"{stem}.png")).shape[1]
        assert pic.shape[1] == 2 * w + 8
        assert (pic[:, :w] == pic[:, w + 8:]).all()
    assert f"Stuff over all images: {total} vs {total} segments, {total} matched" in caplog.text
    assert "100 vs 100 detections, 100 matched" in caplog.text


def test_panoptic_model_source_draws_from_a_temporary_folder(run_dir, tmp_path, monkeypatch, caplog):
    """--model of a panoptic model: its PNGs go to a temporary folder, removed at the end."""
    import centermask2.engine.loop as loop
    import centermask2.engine.sources as sources

    data = json.loads((CASE / PANOPTIC_RESULTS_NAME).read_text())
    seen = {}

    def fake_open_model(path, runtime, **options):
        return SimpleNamespace(label="fake.onnx", panoptic=object(), category_ids=[1], class_names=["person"])

    def fake_run_inference(source, images, progress=True, output_dir=None):
        seen["dir"] = Path(output_dir)
        shutil.copytree(CASE / "panoptic_results", Path(output_dir) / "panoptic_results")
        anns = [dict(a, height=1, width=1) for a in data["annotations"]]
        return load_coco_results(CASE / "coco_instances_results.json"), SimpleNamespace(panoptic=anns)

    monkeypatch.setattr(sources, "open_model", fake_open_model)
    monkeypatch.setattr(loop, "run_inference", fake_run_inference)
    caplog.set_level(logging.INFO)
    args = ["--model", "fake.onnx", "--images", str(CASE / "images"), "--no-progress"]
    assert visualizer.main([*args, "--output-dir", str(tmp_path / "m"), "--compare",
                            str(run_dir / "coco_instances_results.json")]) == 0
    assert not seen["dir"].exists()
    assert "8 vs 8 stuff segments, 8 matched" in caplog.text
    assert visualizer.main([*args, "--output-dir", str(tmp_path / "n"), "--no-stuff"]) == 0
    assert not seen["dir"].exists()
    assert (cv2.imread(str(tmp_path / "n" / f"{STEMS[0]}.png")) == _instances_only(STEMS[0])).all()


def _corrupt_json(d: Path) -> None:
    (d / PANOPTIC_RESULTS_NAME).write_text("{ not json")


def _no_png(d: Path) -> None:
    (d / "panoptic_results" / "000000000002.png").unlink()


def _swapped_pngs(d: Path) -> None:  # 741x500 and 512x512: each the other image's size
    a, b = (d / "panoptic_results" / f"{s}.png" for s in STEMS)
    a.rename(d / "tmp.png")
    b.rename(a)
    (d / "tmp.png").rename(b)


def _jpeg_png(d: Path) -> None:
    path = d / "panoptic_results" / "000000000001.png"
    cv2.imwrite(str(d / "x.jpg"), cv2.imread(str(path)))
    shutil.move(d / "x.jpg", path)


def _unknown_category(d: Path) -> None:
    data = json.loads((d / PANOPTIC_RESULTS_NAME).read_text())
    del data["categories"]
    data["annotations"][0]["segments_info"][-1]["category_id"] = 250
    (d / PANOPTIC_RESULTS_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("damage, needle, when_read", [
    (_corrupt_json, PANOPTIC_RESULTS_NAME, True),
    (_no_png, "000000000002.png", True),
    (_swapped_pngs, "000000000001.png", False),
    (_jpeg_png, "not PNG", False),
    (_unknown_category, "category 250", True),
])
def test_bad_panoptic_files_are_named(run_dir, tmp_path, caplog, damage, needle, when_read):
    damage(run_dir)
    assert _draw(run_dir / "coco_instances_results.json", tmp_path / "out") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and needle in errors[0], errors
    # a file found next to the results (not named by the user) says how to do without it
    assert ("--no-stuff" in errors[0]) == when_read
    caplog.clear()
    elsewhere = shutil.copy(CASE / "coco_instances_results.json", tmp_path / "elsewhere.json")
    assert _draw(elsewhere, tmp_path / "out", "--panoptic-results", str(run_dir / PANOPTIC_RESULTS_NAME)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0] and "--no-stuff" not in errors[0]  # named by the user: no hint
    # --no-stuff does not read them
    assert _draw(run_dir / "coco_instances_results.json", tmp_path / "out", "--no-stuff") == 0


def test_option_conflicts(run_dir, tmp_path):
    pan = str(run_dir / PANOPTIC_RESULTS_NAME)
    assert visualizer.main(["--model", "m.onnx", "--panoptic-results", pan, "--images", str(CASE / "images"),
                            "--output-dir", str(tmp_path)]) == 2
    assert _draw(run_dir / "coco_instances_results.json", tmp_path, "--panoptic-results", pan, "--no-stuff") == 2
