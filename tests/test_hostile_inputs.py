"""Every script fed hostile files: no traceback, a documented exit code, nothing written outside
the output folder.

The files are what users receive from elsewhere: truncated, zero-byte and decompression-bomb
images, annotation files of the wrong JSON types, with duplicate ids or names that climb out of
the images folder, bin folders whose ``bin_info.json`` / ``manifest.json`` name files outside
them, a results file with NaN scores, a YAML alias bomb, an ONNX file that is not a model.
"""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

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
    ckpt = write_checkpoint(LITE, work / "lite.pth")
    files.update(images=images, bins=bins, raw=raw, work=work, out=work / "out", ckpt=ckpt,
                 torch=["--config-file", CONFIGS / case_info(LITE)["config"]],
                 weights=["MODEL.WEIGHTS", ckpt, "MODEL.DEVICE", "cpu"])
    return work, files, ckpt


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
                                                          f["all_bad_images"]], 1,
                 "'score' must be a finite number, got 'NaN'", id="postprocess-results-nan-score"),
    pytest.param("postprocess_bin_outputs.py", lambda f: ["--results", f["list"], "--coco-json", f["not_json"]], 1,
                 "is not a COCO detection", id="postprocess-results-not-detections"),
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
]

#: root script -> the module that holds its main (run in this process: an exception escaping main
#: is what a user would see as a traceback)
MAINS = {"tester.py": "tester", "preprocess_inputs_to_bin.py": "preprocess", "visualizer.py": "visualizer",
         "postprocess_bin_outputs.py": "postprocess", "convert_model_into_onnx.py": "export_onnx"}


@pytest.mark.parametrize(("script", "arguments", "code", "message"), HOSTILE)
def test_hostile_files_never_crash_or_escape(hostile, caplog, capsys, monkeypatch, script, arguments, code, message):
    import importlib

    work, files, _ = hostile
    monkeypatch.chdir(work)
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
