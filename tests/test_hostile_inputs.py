"""Every script fed hostile files: no traceback, a documented exit code, nothing written outside
the output folder.

The files are what users receive from elsewhere: truncated, zero-byte and decompression-bomb
images, annotation files of the wrong JSON types, with duplicate ids or names that climb out of
the images folder, bin folders whose ``bin_info.json`` / ``manifest.json`` name files outside
them, a results file with NaN scores, a YAML alias bomb, an ONNX file that is not a model; model
outputs that are corrupt (a negative ``num_detections``, NaN masks, classes out of range), configs
with values out of range, resource arguments no machine can honour, ground truth and results
written by other tools (accepted where pycocotools / detectron2 accept them, refused by name
otherwise), a full disk and picture names that collide.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from golden import CONFIGS, LITE, ROOT, case_info, write_checkpoint


def _png_bomb(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A work folder: ``work/in`` holds the hostile files, ``work/secret.txt`` must never be read or
    overwritten, outputs go to ``work/out*``."""
    work = tmp_path_factory.mktemp("hostile")
    root = work / "in"
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "000000000001.png")
    (images / "000000000002.png").write_bytes((images / "000000000001.png").read_bytes()[:60])  # truncated
    (images / "000000000003.png").write_bytes(b"")  # zero bytes
    _png_bomb(images / "000000000004.png")
    (work / "secret.txt").write_text("do not touch")
    cats = [{"id": 1, "name": "person"}]

    def ann(name, content):
        (root / name).write_text(content if isinstance(content, str) else json.dumps(content))
        return root / name

    files = {
        "escape": ann("escape.json", {"images": [{"id": 1, "file_name": "../../secret.txt"}], "categories": cats}),
        "absolute": ann("absolute.json", {"images": [{"id": 1, "file_name": str(work / "secret.txt")}],
                                          "categories": cats}),
        "dup_ids": ann("dup_ids.json", {"images": [{"id": 1, "file_name": "000000000001.png"},
                                                   {"id": 1, "file_name": "000000000002.png"}], "categories": cats}),
        "wrong_types": ann("wrong_types.json", {"images": {"id": 1}, "categories": "person"}),
        "not_json": ann("not_json.json", "{ this is not json"),
        "list": ann("list.json", [1, 2, 3]),
        "all_bad_images": ann("all_bad_images.json", {"images": [
            {"id": i, "file_name": f"00000000000{i}.png", "height": 48, "width": 64} for i in (1, 2, 3, 4)],
            "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 81)], "annotations": []}),
        "nan_results": ann("nan_results.json", [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                 "score": "NaN"}]),
        "yaml_bomb": ann("bomb.yaml", "\n".join(['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]'] + [
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"),
        "not_onnx": ann("model.onnx", "not a protobuf"),
    }
    bins = root / "bins"
    (bins / "image_sizes").mkdir(parents=True)
    info = {"dtype": "uint8", "shape": [1, 3, 64, 64], "input_format": "BGR", "min_size": 600, "max_size": 1000,
            "model": None, "version": 1, "images": [{
                "image_id": 1, "file_name": "x.png", "stem": "../../../escaped", "height": 4, "width": 4,
                "resized_height": 4, "resized_width": 4, "bin": "../../secret.txt", "sizes_bin": "image_sizes/x.bin"}]}
    (bins / "bin_info.json").write_text(json.dumps(info))
    raw = root / "raw"
    raw.mkdir()
    (raw / "manifest.json").write_text(json.dumps({"outputs": [
        {"index": 0, "name": "boxes", "dtype": "object", "shape": [1, 50, 4]}], "index_base": 0}))
    _bins_with_outputs(root, files)
    _ground_truth_variants(root, files)
    collide = root / "collide"
    (collide / "a").mkdir(parents=True)
    Image.new("RGB", (64, 48), (30, 200, 30)).save(collide / "a__b.png")
    Image.new("RGB", (64, 48), (30, 30, 200)).save(collide / "a" / "b.png")
    files["collide"] = collide
    files["collide_json"] = ann("collide.json", {"images": [
        {"id": 1, "file_name": "a__b.png", "height": 48, "width": 64},
        {"id": 2, "file_name": "a/b.png", "height": 48, "width": 64}], "categories": cats})
    files["collide_results"] = ann("collide_results.json", [
        {"image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.9} for i in (1, 2)])
    ckpt = write_checkpoint(LITE, work / "lite.pth")
    files.update(images=images, bins=bins, raw=raw, work=work, out=work / "out", ckpt=ckpt,
                 torch=["--config-file", CONFIGS / case_info(LITE)["config"]],
                 weights=["MODEL.WEIGHTS", ckpt, "MODEL.DEVICE", "cpu"])
    return work, files, ckpt


def _write_outputs(raw: Path, outputs: dict) -> None:
    """A RAW folder as ``tester.py --bins`` writes it: manifest.json and ``<stem>_<k>.bin``."""
    raw.mkdir(parents=True)
    specs = [{"index": k, "name": name, "dtype": str(a.dtype), "shape": list(a.shape)}
             for k, (name, a) in enumerate(outputs.items())]
    (raw / "manifest.json").write_text(json.dumps({"outputs": specs, "index_base": 0}))
    for k, a in enumerate(outputs.values()):
        np.ascontiguousarray(a).tofile(raw / f"000000000001_{k}.bin")


def _outputs(k: int = 4, **change) -> dict:
    """One image's raw outputs: two detections of class 0 (person), ``change`` applied."""
    boxes = np.zeros((1, k, 4), np.float32)
    boxes[0, :2] = [[2, 2, 30, 30], [10, 5, 40, 40]]
    out = {
        "boxes": boxes,
        "scores": np.array([[0.9, 0.8] + [0] * (k - 2)], np.float32),
        "classes": np.zeros((1, k), np.int64),
        "masks": np.ones((1, k, 28, 28), np.float32),
        "mask_scores": np.array([[0.7, 0.6] + [0] * (k - 2)], np.float32),
        "num_detections": np.array([2], np.int64),
    }
    for name, (index, value) in change.items():
        out[name][index] = value
    return out


def _bins_with_outputs(root: Path, files: dict) -> None:
    """A bins folder of one image (64x48, not resized) and RAW folders of corrupt outputs for it."""
    good = root / "bins_ok"
    good.mkdir()
    (good / "bin_info.json").write_text(json.dumps({
        "dtype": "uint8", "shape": [1, 3, 64, 64], "input_format": "BGR", "min_size": 48, "max_size": 64,
        "model": None, "version": 1, "images": [{
            "image_id": 1, "file_name": "000000000001.png", "stem": "000000000001", "height": 48, "width": 64,
            "resized_height": 48, "resized_width": 64, "bin": "000000000001.bin",
            "sizes_bin": "image_sizes/000000000001.bin"}]}))
    files["bins_ok"] = good
    corrupt = {
        "raw_negative_count": {"num_detections": (0, -3)},
        "raw_nan_masks": {"masks": ((0, 1), np.nan)},
        "raw_class_out_of_range": {"classes": ((0, 0), 1000)},
        "raw_inf_scores": {"scores": ((0, 0), np.inf)},
    }
    for name, change in corrupt.items():
        _write_outputs(root / name, _outputs(**change))
        files[name] = root / name


def _rle(h: int, w: int, box=(2, 2, 20, 20)) -> dict:
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def _ground_truth_variants(root: Path, files: dict) -> None:
    """Ground truth and results files as other tools write them (image 1 is 48x64)."""
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    polygon = [[2.0, 2.0, 20.0, 2.0, 20.0, 20.0, 2.0, 20.0]]
    image = {"id": 1, "file_name": "000000000001.png", "height": 48, "width": 64}
    gt = {"images": [image], "categories": cats, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 18, 18], "segmentation": polygon, "area": 324,
         "iscrowd": 0}]}
    result = {"image_id": 1, "category_id": 1, "bbox": [2, 2, 18, 18], "score": 0.9, "segmentation": _rle(48, 64),
              "mask_score": 0.8}

    def write(name, content):
        (root / name).write_text(json.dumps(content))
        files[name.split(".")[0]] = root / name

    write("gt.json", gt)
    write("results.json", [result])
    bare = [{k: v for k, v in a.items() if k not in ("area", "iscrowd")} for a in gt["annotations"]]
    write("gt_no_area_iscrowd.json", {**gt, "annotations": bare})
    write("gt_no_image_size_polygons.json", {**gt, "images": [{"id": 1, "file_name": "000000000001.png"}]})
    write("gt_unknown_category.json", {**gt, "annotations": [{**gt["annotations"][0], "category_id": 7}]})
    write("results_polygon.json", [{**result, "segmentation": polygon}])
    write("results_rle_garbage.json", [{**result, "segmentation": {"size": [48, 64], "counts": "zzzz"}}])
    write("results_rle_other_size.json", [{**result, "segmentation": _rle(300, 451)}])
    write("results_mixed_segmentation.json", [result, {k: v for k, v in result.items() if k != "segmentation"}])
    write("results_mixed_mask_score.json", [result, {k: v for k, v in result.items() if k != "mask_score"}])


def _corrupt_backend(**change):
    """Make the PyTorch backend return corrupt outputs: ``change`` = {output: (index, value)}, on top of
    one valid detection (so that the first rows are used)."""

    def patch(monkeypatch, files):
        from centermask2.engine.torch_backend import TorchBackend

        run = TorchBackend.run

        def corrupted(self, inputs):
            out = run(self, inputs)
            out["num_detections"][:] = 1
            out["boxes"][:, 0] = [2, 2, 30, 30]
            out["scores"][:, 0] = 0.9
            out["classes"][:, 0] = 0
            for name, (index, value) in change.items():
                out[name][index] = value
            return out

        monkeypatch.setattr(TorchBackend, "run", corrupted)

    return patch


def _full_disk(monkeypatch, files):
    """A disk with 1 MB free, as ``shutil.disk_usage`` reports it."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100_000_000, 99_000_000, 1_000_000))


def _listing(folder: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(folder))] = (p.stat().st_size, p.stat().st_mtime)
    return out


def _with_annotations(key: str) -> list:
    """The three scripts that read a COCO annotation file, given the hostile one ``key``."""
    what, message = ANNOTATIONS[key]
    return [
        pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--coco-json", f[key],
                                             "--output-dir", f["out"], *f["weights"]], 2, message,
                     id=f"tester-{what}"),
        pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                               f["images"], "--coco-json", f[key], "--output", f["out"]],
                     2, message, id=f"preprocess-{what}"),
        pytest.param("visualizer.py", lambda f: ["--results", f["nan_results"], "--images", f["images"], "--coco-json",
                                                 f[key], "--output-dir", f["out"]], 2, message,
                     id=f"visualizer-{what}"),
    ]


#: hostile annotation file -> (what it is, what the error says)
ANNOTATIONS = {
    "escape": ("annotations-file-name-climbs-out", "'../../secret.txt' points outside"),
    "absolute": ("annotations-absolute-file-name", "must be a relative path inside"),
    "dup_ids": ("annotations-duplicate-image-ids", "lists the image id(s) 1 more than once"),
    "wrong_types": ("annotations-wrong-json-types", "is not a COCO annotation file (no 'images' list)"),
    "not_json": ("annotations-not-json", "is not a valid COCO annotation file (not UTF-8 JSON"),
    "list": ("annotations-a-json-list", "expected a JSON dict, found list"),
}

#: (script, its arguments given the hostile files, exit code, what it says); every image but one
#: unreadable gives exit 1 with the images named, the rest exit 2 with a one-line ``error: ...``
HOSTILE = [
    *(param for key in ANNOTATIONS for param in _with_annotations(key)),
    # every image but one unreadable (truncated, empty, decompression bomb): named and skipped, exit 1
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--coco-json", f["all_bad_images"],
                                         "--output-dir", f["out"], *f["weights"]], 1, "too large to decode safely",
                 id="tester-unreadable-images"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                           f["images"], "--output", f["out"]], 1,
                 "too large to decode safely", id="preprocess-unreadable-images"),
    pytest.param("visualizer.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                             *f["weights"]], 1,
                 "3 image(s) could not be read: 000000000002.png, 000000000003.png, 000000000004.png",
                 id="visualizer-unreadable-images"),
    # untrusted bin folders and results
    pytest.param("tester.py", lambda f: ["--model", f["not_onnx"], "--bins", f["bins"], "--output", f["out"]], 2,
                 "is not an ONNX model", id="tester-bins-model-not-onnx"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--outputs", f["raw"], "--info", f["bins"], "--output-dir",
                                                          f["out"]], 2,
                 "stem '../../../escaped' is not a plain file name", id="postprocess-bin-info-climbs-out"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["nan_results"], "--coco-json",
                                                          f["all_bad_images"]], 2,
                 "'score' must be a finite number, got 'NaN'", id="postprocess-results-nan-score"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["list"], "--coco-json", f["gt"]], 2,
                 "is not a COCO detection", id="postprocess-results-not-detections"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results"], "--coco-json", f["not_json"]], 2,
                 "is not a valid COCO annotation file", id="postprocess-ground-truth-not-json"),
    # configs and models
    pytest.param("convert_model_into_onnx.py", lambda f: ["--config-file", f["yaml_bomb"], "--output",
                                                          f["work"] / "out" / "m.onnx", "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "YAML aliases (*a0) are not supported", id="export-yaml-alias-bomb"),
    pytest.param("tester.py", lambda f: ["--backend", "onnx", "--model", f["not_onnx"], "--images", f["images"],
                                         "--output-dir", f["out"]], 2, "is not an ONNX model",
                 id="tester-model-not-onnx"),
    pytest.param("convert_model_into_onnx.py", lambda f: ["--config-file", f["torch"][1], "--output", f["work"],
                                                          "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "is a folder; give a file path", id="export-output-is-a-folder"),
    # model outputs: checked once, the same way in image mode (a corrupt model stops the run, exit 2)
    # and in .bin post-processing (a corrupt image's bins are skipped, exit 1)
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         *f["weights"]], 2, "num_detections is -3, outside [0, ",
                 id="tester-outputs-negative-num-detections"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         *f["weights"]], 2, "masks of the first 1 detection(s) hold NaN or infinite",
                 id="tester-outputs-nan-masks"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         *f["weights"]], 2, "classes must be in [0, 80), got 1000",
                 id="tester-outputs-class-out-of-range"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--outputs", f["raw_negative_count"], "--info",
                                                          f["bins_ok"], "--output-dir", f["out"]], 1,
                 "num_detections is -3, outside [0, 4]", id="postprocess-outputs-negative-num-detections"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--outputs", f["raw_nan_masks"], "--info", f["bins_ok"],
                                                          "--output-dir", f["out"]], 1,
                 "masks of the first 2 detection(s) hold NaN or infinite", id="postprocess-outputs-nan-masks"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--outputs", f["raw_class_out_of_range"], "--info",
                                                          f["bins_ok"], "--output-dir", f["out"]], 1,
                 "classes must be in [0, 80), got 1000", id="postprocess-outputs-class-out-of-range"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--outputs", f["raw_inf_scores"], "--info", f["bins_ok"],
                                                          "--output-dir", f["out"]], 1,
                 "scores of the first 2 detection(s) hold NaN or infinite", id="postprocess-outputs-inf-scores"),
    # config values out of range: refused when the config loads, naming the key and the valid range
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         *f["weights"], "INPUT.MIN_SIZE_TEST", "-5"], 2,
                 "INPUT.MIN_SIZE_TEST = -5 is out of range", id="tester-config-negative-test-size"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         *f["weights"], "INPUT.FORMAT", "XYZ"], 2,
                 "INPUT.FORMAT = 'XYZ' is out of range: must be one of 'BGR', 'RGB'",
                 id="tester-config-unknown-input-format"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         *f["weights"], "MODEL.FCOS.PRE_NMS_TOPK_TEST", "-1"], 2,
                 "MODEL.FCOS.PRE_NMS_TOPK_TEST = -1 is out of range", id="tester-config-top-k-minus-one"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                           f["images"], "--output", f["out"], "MODEL.PIXEL_STD",
                                                           "[57.4, 0.0, 57.1]"], 2,
                 "MODEL.PIXEL_STD = [57.4, 0.0, 57.1] is out of range", id="preprocess-config-zero-pixel-std"),
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["out"] / "m.onnx",
                                                          "MODEL.WEIGHTS", f["ckpt"], "MODEL.FCOS.NMS_TH", "1.5"], 2,
                 "MODEL.FCOS.NMS_TH = 1.5 is out of range", id="export-config-nms-threshold-above-one"),
    # resource arguments: bounded, with the reason
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"], "--threads",
                                         "100000", *f["weights"]], 2, "--threads: 100000 is more than",
                 id="tester-threads-100000"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         "--batch-size", "100000", *f["weights"]], 2, "--batch-size: 100000 is more than",
                 id="tester-batch-size-100000"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"], "--ray",
                                         "--ray-actors", "100000", *f["weights"]], 2,
                 "--ray-actors: 100000 is more than", id="tester-ray-actors-100000"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                           f["images"], "--output", f["out"], "--workers", "100000"], 2,
                 "--workers: 100000 is more than", id="preprocess-workers-100000"),
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["out"] / "m.onnx",
                                                          "--max-detections", "1000000000", "MODEL.WEIGHTS", f["ckpt"]],
                 2, "--max-detections: 1000000000 is more than 10000", id="export-max-detections-1e9"),
    # exit codes and messages as the README says
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["out"] / "m.onnx", "--opset",
                                                          "99", "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "--opset 99 is not supported: this exporter writes opsets 16 to ", id="export-opset-99"),
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["out"] / "m.onnx", "--verify",
                                                          f["images"] / "000000000003.png", "MODEL.WEIGHTS", f["ckpt"]],
                 2, "--verify image", id="export-verify-image-unreadable"),
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["out"] / "m.onnx",
                                                          "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "not enough free space for", id="export-disk-full"),
    pytest.param("visualizer.py", lambda f: ["--results", f["collide_results"], "--images", f["collide"],
                                             "--coco-json", f["collide_json"], "--output-dir", f["out"] / "vis"], 0,
                 "would both be drawn as a__b.png", id="visualizer-picture-names-collide"),
    # ground truth and results as other tools write them: accepted as pycocotools / detectron2 accept
    # them, refused by name before any work otherwise
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results"], "--coco-json",
                                                          f["gt_no_area_iscrowd"]], 0,
                 "1 annotation(s) without 'area' (computed from their masks or boxes, as detectron2) and 1 without "
                 "'iscrowd' (0)", id="postprocess-ground-truth-without-area-iscrowd"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results_polygon"], "--coco-json",
                                                          f["gt"]], 0,
                 "1 polygon segmentation(s) converted to RLE", id="postprocess-results-polygon-segmentation"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results"], "--coco-json",
                                                          f["gt_no_image_size_polygons"]], 2,
                 "image id 1 has no 'height'/'width'", id="postprocess-ground-truth-image-without-size"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results"], "--coco-json",
                                                          f["gt_unknown_category"]], 2,
                 "annotation id 1 has category_id 7, which 'categories' does not list",
                 id="postprocess-ground-truth-unknown-category"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--coco-json", f["gt_unknown_category"],
                                         "--output-dir", f["out"], *f["weights"]], 2,
                 "annotation id 1 has category_id 7, which 'categories' does not list",
                 id="tester-ground-truth-unknown-category"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results_rle_garbage"], "--coco-json",
                                                          f["gt"]], 2,
                 "Entry 0 of results file", id="postprocess-results-rle-does-not-decode"),
    pytest.param("visualizer.py", lambda f: ["--results", f["results_rle_garbage"], "--images", f["images"],
                                             "--output-dir", f["out"]], 2,
                 "'segmentation' is not a valid RLE", id="visualizer-results-rle-does-not-decode"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results_rle_other_size"], "--coco-json",
                                                          f["gt"]], 2,
                 "its 'segmentation' is 300x451 but image 1 is 48x64", id="postprocess-results-rle-of-another-size"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results_mixed_segmentation"],
                                                          "--coco-json", f["gt"]], 2,
                 "1 of 2 detections have no 'segmentation'", id="postprocess-results-without-segmentation"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["results_mixed_mask_score"],
                                                          "--coco-json", f["gt"]], 2,
                 "1 of 2 detections have no 'mask_score'", id="postprocess-results-without-mask-score"),
]

#: test id -> what to change before the script runs (monkeypatch, files)
PATCHES = {
    "tester-outputs-negative-num-detections": _corrupt_backend(num_detections=(slice(None), -3)),
    "tester-outputs-nan-masks": _corrupt_backend(masks=((slice(None), 0), np.nan)),
    "tester-outputs-class-out-of-range": _corrupt_backend(classes=((slice(None), 0), 1000)),
    "export-disk-full": _full_disk,
}

#: root script -> the module that holds its main (run in this process: an exception escaping main
#: is what a user would see as a traceback)
MAINS = {"tester.py": "tester", "preprocess_inputs_to_bin.py": "preprocess", "visualizer.py": "visualizer",
         "postprocess_bin_outputs.py": "postprocess", "convert_model_into_onnx.py": "export_onnx"}


@pytest.mark.parametrize(("script", "arguments", "code", "message"), HOSTILE)
def test_hostile_files_never_crash_or_escape(hostile, caplog, capsys, monkeypatch, request, script, arguments, code,
                                             message):
    import importlib

    work, files, _ = hostile
    monkeypatch.chdir(work)
    patch = PATCHES.get(request.node.callspec.id)
    if patch is not None:
        patch(monkeypatch, files)
    args = [str(a) for a in arguments(files)]
    before = {k: v for k, v in _listing(work).items() if not k.startswith("out")}
    main = importlib.import_module(f"centermask2.cli.{MAINS[script]}").main
    rc = main(args)  # raises (fails the test) where a user would see a traceback
    said = caplog.text + capsys.readouterr().err
    assert rc == code, f"exit {rc}\n{said[-2000:]}"
    assert message in said, said[-2000:]
    assert rc != 2 or "error: " in said, said[-2000:]  # exit 2 says what is wrong, on one line
    after = {k: v for k, v in _listing(work).items() if not k.startswith("out")}
    assert after == before, f"wrote outside its output folder: {set(after) ^ set(before)}"
    assert (work / "secret.txt").read_text() == "do not touch"


def test_the_table_covers_every_script():
    assert len(HOSTILE) >= 25
    assert {p.values[0] for p in HOSTILE} == set(MAINS)
    assert set(PATCHES) <= {p.id for p in HOSTILE}


def test_pictures_whose_names_collide_are_both_kept(hostile, tmp_path):
    """``a__b.png`` and ``a/b.png`` would both be drawn as ``a__b.png``: each gets its own picture."""
    from centermask2.cli.visualizer import main

    _, files, _ = hostile
    out = tmp_path / "vis"
    assert main(["--results", str(files["collide_results"]), "--images", str(files["collide"]), "--coco-json",
                 str(files["collide_json"]), "--output-dir", str(out), "--no-progress"]) == 0
    pictures = sorted(p.name for p in out.iterdir())
    assert len(pictures) == 2, pictures
    greens = [np.asarray(Image.open(out / name))[40, 60] for name in pictures]
    assert {tuple(int(v) for v in g) for g in greens} == {(30, 200, 30), (30, 30, 200)}  # both images, not one twice


@pytest.mark.parametrize("script", ["tester.py", "convert_model_into_onnx.py"])
def test_ctrl_c_while_starting_exits_130_without_traceback(script, tmp_path):
    """Ctrl-C in the first instant (while the script still imports its modules) is an interruption
    like any other: exit 130, one line, no traceback. ``-X importtime`` tells when the import is
    under way (it prints each module as its import ends)."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", str(ROOT / script), "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in proc.stderr:
        if line.rstrip().endswith("centermask2.errors"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]


@pytest.mark.parametrize(("script", "arguments", "message"), [
    pytest.param("preprocess_inputs_to_bin.py", lambda f: ["--model", f["not_onnx"], "--images", f["images"],
                                                           "--coco-json", f["escape"], "--output", f["out"]],
                 "is not an ONNX model", id="preprocess-model-not-onnx"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--outputs", f["raw"], "--info", f["bins"], "--output-dir",
                                                          f["out"]],
                 "stem '../../../escaped' is not a plain file name", id="postprocess-bin-info-climbs-out"),
])
def test_a_script_run_shows_no_traceback(hostile, script, arguments, message):
    """The same through a real process, once per script family: one ``error: ...`` line, no traceback."""
    work, files, _ = hostile
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, arguments(files))], capture_output=True,
                          text=True, cwd=work, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("error: ") == 1 and message in proc.stderr, proc.stderr


def test_images_are_named_when_skipped(hostile, tmp_path):
    work, files, ckpt = hostile
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tester.py"), "--config-file", str(CONFIGS / case_info(LITE)["config"]),
         "--images", str(files["images"]), "--output-dir", str(tmp_path / "out"), "--no-progress",
         "MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    for name in ("000000000002.png", "000000000003.png", "000000000004.png"):
        assert name in proc.stderr
    assert "too large to decode safely" in proc.stderr
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} <= {1}
