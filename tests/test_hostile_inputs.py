"""Every script fed hostile files: no traceback, a documented exit code, nothing written outside
the output folder, no hang.

The files are what users receive from elsewhere: truncated, zero-byte and decompression-bomb
images, annotation files of the wrong JSON types, with duplicate ids or names that climb out of
the images folder, bin folders whose ``bin_info.json`` / ``manifest.json`` name files outside
them, a results file with NaN scores, a YAML alias bomb, an ONNX file that is not a model; JSON and
YAML nested 200,000 deep, ``Infinity`` and fractional ids, files larger than their kind ever is,
named pipes where a file should be, wrong types in ``bin_info.json`` / ``manifest.json`` / model
metadata, a checkpoint that declares far more than the model, progress and ``last_checkpoint``
files the run did not write, links inside an output folder and a folder another run is using; model
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
import onnx
import pycocotools.mask as mask_util
import pytest
from onnx import TensorProto, helper
from PIL import Image

from centermask2.contract import ModelMetadata, default_output_specs
from golden import CONFIGS, LITE, META, ROOT, case_info, write_checkpoint

SAMPLE = ROOT / "tools" / "sample"


def _png_bomb(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _fifo(path: Path) -> Path:
    """A named pipe: opening it for reading waits for a writer that never comes."""
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes (zeros) that takes no disk space."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _declare(path: Path, entry: str, size: int) -> None:
    """Make the zip ``path``'s central directory declare ``size`` uncompressed bytes for ``entry``."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46: at + 46 + name_len].decode() == entry:
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{entry} not in {path}")


def _model_with(path: Path, **changes: str) -> Path:
    """A one-node ONNX model whose metadata is a static 640x960 batch-1 model's, with ``changes``
    (``input_size="640x960x3"`` sets ``centermask2.input_size``)."""
    props = ModelMetadata(**{**META.__dict__, "batch_size": 1}).to_props()
    props.update({f"centermask2.{k}": v for k, v in changes.items()})
    inp = helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 640, 960])
    out = helper.make_tensor_value_info("boxes", TensorProto.UINT8, [1, 3, 640, 960])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["boxes"])], "g", [inp], [out]))
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


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
        "deep": ann("deep.json", '{"images": ' + "[" * 200_000 + "]" * 200_000 + ', "categories": []}'),
        "infinity_id": ann("infinity_id.json", '{"images": [{"id": Infinity, "file_name": "000000000001.png"}], '
                                               '"categories": [{"id": 1, "name": "person"}]}'),
        "fractional_id": ann("fractional_id.json", {"images": [{"id": 1.5, "file_name": "000000000001.png"}],
                                                    "categories": cats}),
        "fifo_json": _fifo(root / "fifo.json"),
        "fifo_onnx": _fifo(root / "fifo.onnx"),
        "fifo_pth": _fifo(root / "fifo.pth"),
        "fifo_yaml": _fifo(root / "fifo.yaml"),
        "yaml_fifo_base": ann("fifo_base.yaml", "_BASE_: fifo.yaml\n"),
        "yaml_deep": ann("deep.yaml", "MODEL: " + "[" * 200_000 + "]" * 200_000 + "\n"),
        "yaml_huge": _sparse(root / "huge.yaml", 2 << 20),
        "meta_three_part": _model_with(root / "three_part.onnx", input_size="640x960x3"),
        "meta_strings": _model_with(root / "strings.onnx", category_ids='["3", "7"]'),
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

    # well-formed bin_info.json and manifest.json, and variants with one thing wrong
    good_image = {"image_id": 1, "file_name": "x.png", "stem": "x", "height": 4, "width": 4, "resized_height": 4,
                  "resized_width": 4, "bin": "x.bin", "sizes_bin": "image_sizes/x.bin"}
    good_info = {**info, "images": [good_image]}
    good_manifest = {"outputs": [vars(o) for o in default_output_specs(50)], "index_base": 0, "model": None,
                     "version": 1}

    def folder(name, file_name, content):
        (root / name).mkdir()
        path = root / name / file_name
        if isinstance(content, int):
            _sparse(path, content)
        elif content is None:
            _fifo(path)
        else:
            path.write_text(json.dumps(content))
        return root / name

    files.update(
        raw_good=folder("raw_good", "manifest.json", good_manifest),
        bins_good=folder("bins_good", "bin_info.json", good_info),
        bins_shape_text=folder("bins_shape_text", "bin_info.json", {**good_info, "shape": "1x3x256x256"}),
        bins_size_text=folder("bins_size_text", "bin_info.json", {**good_info, "images": [{**good_image,
                                                                                          "height": "480"}]}),
        bins_huge=folder("bins_huge", "bin_info.json", 65 << 20),
        bins_fifo=folder("bins_fifo", "bin_info.json", None),
        raw_huge_dims=folder("raw_huge_dims", "manifest.json", {**good_manifest, "outputs": [
            {"index": 0, "name": "boxes", "dtype": "float32", "shape": [1, 10**20, 4]}]}),
        raw_index_base_text=folder("raw_index_base_text", "manifest.json", {**good_manifest, "index_base": "0"}),
    )

    # output folders: with a link inside, one another run holds, resume files this run did not write
    (work / "elsewhere").mkdir()
    (work / "out_link").mkdir()
    (work / "out_link" / "image_sizes").symlink_to(work / "elsewhere")
    (work / "out_partial").mkdir()
    (work / "out_partial" / "coco_instances_results.partial.jsonl").write_text(json.dumps(
        {"image_id": 1, "records": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 0.99}]}) + "\n")
    (work / "out_partial_link").mkdir()
    (work / "out_partial_link" / "coco_instances_results.partial.jsonl").symlink_to(work / "secret.txt")
    (work / "out_nosettings" / "image_sizes").mkdir(parents=True)
    (work / "out_nosettings" / "000000000001.bin").write_bytes(b"\0" * (3 * 1344 * 1344))
    (work / "out_nosettings" / "image_sizes" / "000000000001.bin").write_bytes(struct.pack("<qq", 1008, 1344))
    (work / "out_resume").mkdir()
    _bins_with_outputs(root, files)
    _ground_truth_variants(root, files)
    _second_probe_variants(root, files)
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
    (work / "out_resume" / "last_checkpoint").write_text(str(ckpt))
    bomb = write_checkpoint(LITE, work / "bomb.pth")
    import zipfile

    with zipfile.ZipFile(bomb, "a") as archive:
        zeros = archive.namelist()[0].split("/")[0] + "/data/zeros"  # torch reads entries under the first one's folder
        archive.writestr(zeros, b"\0" * 16)
    _declare(bomb, zeros, 1536 << 20)  # 1.5 GiB declared by a small file
    (work / "out_locked").mkdir()
    holder = subprocess.Popen(  # another run holding out_locked until its stdin closes (also if this one dies)
        [sys.executable, "-c", "import sys\nfrom centermask2.fileio import ensure_writable_dir\n"
         "ensure_writable_dir(sys.argv[1])\nprint('held', flush=True)\nsys.stdin.read()", str(work / "out_locked")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    train = ["--config-file", CONFIGS / case_info(LITE)["config"], "--coco-json", SAMPLE / "annotations_gt.json",
             "--images", SAMPLE / "images", "--no-progress"]
    train_opts = ["MODEL.DEVICE", "cpu", "SEED", "3", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "100",
                  "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "1", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()"]
    files.update(bomb=bomb, train=train, train_opts=train_opts)
    files.update(images=images, bins=bins, raw=raw, work=work, out=work / "out", ckpt=ckpt,
                 torch=["--config-file", CONFIGS / case_info(LITE)["config"]],
                 weights=["MODEL.WEIGHTS", ckpt, "MODEL.DEVICE", "cpu"])
    yield work, files, ckpt
    holder.stdin.close()
    holder.wait(timeout=60)


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


def _second_probe_variants(root: Path, files: dict) -> None:
    """What the second hostile probe found: categories listed twice, a named pipe among the listed
    images, training annotations whose masks do not decode or whose boxes are negative, results
    without mask scores drawn by mask score."""
    def write(name, content):
        (root / name).write_text(json.dumps(content))
        files[name.split(".")[0]] = root / name

    write("dup_categories.json", {"images": [{"id": 1, "file_name": "000000000001.png", "height": 48, "width": 64}],
                                  "categories": [{"id": 1, "name": "person"}, {"id": 1, "name": "car"}]})
    fifo_images = root / "fifo_images"
    fifo_images.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(fifo_images / "000000000001.png")
    _fifo(fifo_images / "000000000002.png")
    files["fifo_images"] = fifo_images
    write("fifo_images_list.json", {"images": [{"id": i, "file_name": f"00000000000{i}.png"} for i in (1, 2)],
                               "categories": [{"id": 1, "name": "person"}]})
    train = json.loads((SAMPLE / "annotations_gt.json").read_text())
    first = {**train["annotations"][0], "segmentation": {"size": [5, 5], "counts": "zzzz"}}
    write("train_rle_garbage.json", {**train, "annotations": [first, *train["annotations"][1:]]})
    first = {**train["annotations"][0], "bbox": [10, 10, -50, -50]}
    write("train_negative_box.json", {**train, "annotations": [first, *train["annotations"][1:]]})
    results = json.loads(files["results"].read_text())
    write("results_no_mask_score.json", [{k: v for k, v in r.items() if k != "mask_score"} for r in results])


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
    "deep": ("annotations-nested-200000-deep", "nested more than 100 levels deep"),
    "infinity_id": ("annotations-infinity-id", "Infinity is not a JSON number"),
    "fractional_id": ("annotations-fractional-image-id", "image id 1.5 is not an integer"),
    "fifo_json": ("annotations-a-named-pipe", "is not a regular file (a named pipe)"),
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
    # bin_info.json and manifest.json: wrong types, sizes no such file has, not a file
    *(pytest.param("postprocess_bin_outputs.py", lambda f, key=key: [
        "--outputs", f["raw_good"], "--info", f[key], "--output-dir", f["out"]], 2, message, id=f"postprocess-{what}")
      for key, what, message in (
        ("bins_shape_text", "bin-info-shape-a-string",
         "'shape' must be a list of 4 positive integers [1, 3, H, W], got '1x3x256x256'"),
        ("bins_size_text", "bin-info-size-a-string", "'height' of image 'x' must be an integer, got '480'"),
        ("bins_huge", "bin-info-huge-file", "is larger than a bin info file can be"),
        ("bins_fifo", "bin-info-a-named-pipe", "is not a regular file (a named pipe)"),
    )),
    *(pytest.param("postprocess_bin_outputs.py", lambda f, key=key: [
        "--outputs", f[key], "--info", f["bins_good"], "--output-dir", f["out"]], 2, message, id=f"postprocess-{what}")
      for key, what, message in (
        ("raw_huge_dims", "manifest-huge-dims", "output 'boxes' has shape [1, 100000000000000000000, 4], more than"),
        ("raw_index_base_text", "manifest-index-base-a-string", "'index_base' must be 0 or 1, got '0'"),
    )),
    # model metadata
    pytest.param("preprocess_inputs_to_bin.py", lambda f: ["--model", f["meta_three_part"], "--images", f["images"],
                                                           "--output", f["out"]], 2,
                 "metadata 'centermask2.input_size' = '640x960x3' is malformed (expected HxW",
                 id="preprocess-metadata-three-part-input-size"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: ["--model", f["meta_strings"], "--images", f["images"],
                                                           "--output", f["out"]], 2,
                 "metadata 'centermask2.category_ids' = '[\"3\", \"7\"]' is malformed (expected a list of integers",
                 id="preprocess-metadata-ids-as-strings"),
    # configs
    pytest.param("convert_model_into_onnx.py", lambda f: ["--config-file", f["yaml_fifo_base"], "--output",
                                                          f["out"] / "m.onnx", "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "is not a regular file (a named pipe)", id="export-config-base-a-named-pipe"),
    pytest.param("tester.py", lambda f: ["--config-file", f["fifo_yaml"], "--images", f["images"], "--output-dir",
                                         f["out"], *f["weights"]], 2, "is not a regular file (a named pipe)",
                 id="tester-config-a-named-pipe"),
    pytest.param("convert_model_into_onnx.py", lambda f: ["--config-file", f["yaml_deep"], "--output",
                                                          f["out"] / "m.onnx", "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "nested more than 100 levels deep", id="export-config-nested-200000-deep"),
    pytest.param("convert_model_into_onnx.py", lambda f: ["--config-file", f["yaml_huge"], "--output",
                                                          f["out"] / "m.onnx", "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "is larger than a config file can be", id="export-config-huge-file"),
    # models and checkpoints
    pytest.param("tester.py", lambda f: ["--backend", "onnx", "--model", f["fifo_onnx"], "--images", f["images"],
                                         "--output-dir", f["out"]], 2, "is not a regular file (a named pipe)",
                 id="tester-model-a-named-pipe"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"],
                                         "MODEL.WEIGHTS", f["fifo_pth"], "MODEL.DEVICE", "cpu"], 2,
                 "is not a regular file (a named pipe)", id="tester-checkpoint-a-named-pipe"),
    pytest.param("tools/train_net.py", lambda f: [*f["train"], "--output-dir", f["work"] / "out_train",
                                                  *f["train_opts"], "MODEL.WEIGHTS", f["bomb"]], 2,
                 "declares 1,6", id="train-checkpoint-declares-far-more-than-the-model"),
    pytest.param("tools/train_net.py", lambda f: [*f["train"], "--output-dir", f["work"] / "out_resume", "--resume",
                                                  *f["train_opts"]], 2,
                 "which is not a file in the output folder", id="train-last-checkpoint-outside-output-dir"),
    # resume files the run did not write
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["work"] / "out_partial",
                                         "--resume", *f["weights"]], 2, "has no run identity",
                 id="tester-resume-progress-file-without-identity"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                           f["images"], "--output", f["work"] / "out_nosettings",
                                                           "--resume"], 2,
                 "has no bin_settings.json", id="preprocess-resume-bins-without-settings"),
    # output folders: links inside, another run in the same folder
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                           f["images"], "--output", f["work"] / "out_link"], 2,
                 "holds a symbolic link 'image_sizes'", id="preprocess-output-subfolder-a-link"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir",
                                         f["work"] / "out_partial_link", "--resume", *f["weights"]], 2,
                 "holds a symbolic link 'coco_instances_results.partial.jsonl'",
                 id="tester-resume-progress-file-a-link"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "1344x1344", "--images",
                                                           f["images"], "--output", f["work"] / "out_locked"], 2,
                 "another run is using the output folder", id="preprocess-output-folder-in-use"),
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
    # the second probe: sizes no input can have, a threshold that selects nothing, categories listed twice
    # (an export would write a model the tester refuses), a named pipe among the images, training
    # masks that do not decode, negative training boxes, learning-rate steps out of order
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--output-dir", f["out"], "--pad-to",
                                         "65536x65536", *f["weights"]], 2,
                 "--pad-to: size '65536x65536' is larger than 16384 pixels per side", id="tester-pad-to-65536"),
    pytest.param("preprocess_inputs_to_bin.py", lambda f: [*f["torch"], "--input-size", "65536x65536", "--images",
                                                           f["images"], "--output", f["out"]], 2,
                 "--input-size: size '65536x65536' is larger than 16384", id="preprocess-input-size-65536"),
    pytest.param("visualizer.py", lambda f: ["--results", f["results"], "--images", f["images"], "--output-dir",
                                             f["out"], "--score-threshold", "nan"], 2,
                 "--score-threshold: must be a number from 0 to 1", id="visualizer-score-threshold-nan"),
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["out"] / "m.onnx", "--coco-json",
                                                          f["dup_categories"], "MODEL.WEIGHTS", f["ckpt"]], 2,
                 "lists category id(s) [1] more than once", id="export-categories-duplicate-ids"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["images"], "--coco-json", f["dup_categories"],
                                         "--output-dir", f["out"], *f["weights"]], 2,
                 "lists category id(s) [1] more than once", id="tester-categories-duplicate-ids"),
    pytest.param("tester.py", lambda f: [*f["torch"], "--images", f["fifo_images"], "--coco-json",
                                         f["fifo_images_list"], "--output-dir", f["out"], *f["weights"]], 2,
                 "are not regular files in", id="tester-image-a-named-pipe"),
    pytest.param("tools/train_net.py", lambda f: [*f["train"][:2], "--coco-json", f["train_rle_garbage"],
                                                  *f["train"][4:], "--output-dir", f["out"] / "train", *f["train_opts"]],
                 2, "'segmentation' is not a valid RLE", id="train-annotations-rle-does-not-decode"),
    pytest.param("tools/train_net.py", lambda f: [*f["train"][:2], "--coco-json", f["train_negative_box"],
                                                  *f["train"][4:], "--output-dir", f["out"] / "train", *f["train_opts"]],
                 2, "width and height must be >= 0", id="train-annotations-negative-box"),
    pytest.param("tools/train_net.py", lambda f: [*f["train"], "--output-dir", f["out"] / "train", *f["train_opts"],
                                                  "SOLVER.STEPS", "(5, 2)"], 2,
                 "SOLVER.STEPS = (5, 2) is out of range", id="train-solver-steps-out-of-order"),
    pytest.param("convert_model_into_onnx.py", lambda f: [*f["torch"], "--output", f["fifo_onnx"], "MODEL.WEIGHTS",
                                                          f["ckpt"]], 2,
                 "is not a regular file (a named pipe): the toolkit writes the file next to it",
                 id="export-output-a-named-pipe"),
    pytest.param("visualizer.py", lambda f: ["--results", f["results_no_mask_score"], "--images", f["images"],
                                             "--output-dir", f["out"], "--score", "mask"], 2,
                 "--score mask: 1 of the 1 detections of in/results_no_mask_score.json have no 'mask_score'",
                 id="visualizer-score-mask-without-mask-scores"),
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
         "postprocess_bin_outputs.py": "postprocess", "convert_model_into_onnx.py": "export_onnx",
         "tools/train_net.py": "train"}


class _Hung(BaseException):
    """Raised by the alarm in a script that still runs after its time (not caught by ``run_main``)."""


def _hung(signum, frame):
    raise _Hung("still running after 120 s: a read that never ends?")


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
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(120)
    try:
        rc = main(args)  # raises (fails the test) where a user would see a traceback, or hangs
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    said = caplog.text + capsys.readouterr().err
    assert rc == code, f"exit {rc}\n{said[-2000:]}"
    assert message in said, said[-2000:]
    assert rc != 2 or "error: " in said, said[-2000:]  # exit 2 says what is wrong, on one line
    after = {k: v for k, v in _listing(work).items() if not k.startswith("out")}
    assert after == before, f"wrote outside its output folder: {set(after) ^ set(before)}"
    assert (work / "secret.txt").read_text() == "do not touch"


def test_the_table_covers_every_script():
    assert len(HOSTILE) >= 55
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
