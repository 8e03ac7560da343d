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

from golden import CONFIGS, case_info, write_checkpoint

ROOT = Path(__file__).resolve().parent.parent
LITE = "lite_V_19_slim_dw"


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
    files.update(images=images, bins=bins, raw=raw)
    ckpt = write_checkpoint(LITE, work / "lite.pth")
    return work, files, ckpt


def _listing(folder: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(folder))] = (p.stat().st_size, p.stat().st_mtime)
    return out


def _cases(work, f, ckpt):
    lite_cfg = str(CONFIGS / case_info(LITE)["config"])
    torch_src = ["--config-file", lite_cfg]
    weights = ["MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", "cpu"]
    out = str(work / "out")
    # (script, arguments, allowed exit codes)
    cases = []
    for key in ("escape", "absolute", "dup_ids", "wrong_types", "not_json", "list"):
        cases += [
            ("tester.py", [*torch_src, "--images", f["images"], "--coco-json", f[key], "--output-dir", out, *weights],
             {2}),
            ("preprocess_inputs_to_bin.py", [*torch_src, "--input-size", "1344x1344", "--images", f["images"],
                                             "--coco-json", f[key], "--output", out], {2}),
            ("visualizer.py", ["--results", f["nan_results"], "--images", f["images"], "--coco-json", f[key],
                               "--output-dir", out], {2}),
        ]
    cases += [
        # every image but one unreadable: named and skipped, exit 1
        ("tester.py", [*torch_src, "--images", f["images"], "--coco-json", f["all_bad_images"], "--output-dir", out,
                       *weights], {1}),
        ("preprocess_inputs_to_bin.py", [*torch_src, "--input-size", "1344x1344", "--images", f["images"],
                                         "--output", out], {1}),
        ("visualizer.py", ["--config-file", lite_cfg, "--images", f["images"], "--output-dir", out, *weights], {1}),
        # untrusted bin folders and results
        ("tester.py", ["--model", f["not_onnx"], "--bins", f["bins"], "--output", out], {2}),
        ("postprocess_bin_outputs.py", ["--outputs", f["raw"], "--info", f["bins"], "--output-dir", out], {2}),
        ("postprocess_bin_outputs.py", ["--results", f["nan_results"], "--coco-json", f["all_bad_images"]], {1}),
        ("postprocess_bin_outputs.py", ["--results", f["list"], "--coco-json", f["not_json"]], {1}),
        # configs and models
        ("convert_model_into_onnx.py", ["--config-file", f["yaml_bomb"], "--output", str(work / "out" / "m.onnx"),
                                        "MODEL.WEIGHTS", str(ckpt)], {2}),
        ("tester.py", ["--backend", "onnx", "--model", f["not_onnx"], "--images", f["images"], "--output-dir", out],
         {2}),
        ("convert_model_into_onnx.py", ["--config-file", lite_cfg, "--output", str(work), "MODEL.WEIGHTS", str(ckpt)],
         {2}),  # --output is a folder
    ]
    return cases


#: root script -> the module that holds its main (run in this process: an exception escaping main
#: is what a user would see as a traceback)
MAINS = {"tester.py": "tester", "preprocess_inputs_to_bin.py": "preprocess", "visualizer.py": "visualizer",
         "postprocess_bin_outputs.py": "postprocess", "convert_model_into_onnx.py": "export_onnx"}


def test_hostile_files_never_crash_or_escape(hostile, caplog, capsys, monkeypatch):
    import importlib

    work, files, ckpt = hostile
    monkeypatch.chdir(work)
    cases = _cases(work, files, ckpt)
    for script, args, codes in cases:
        before = {k: v for k, v in _listing(work).items() if not k.startswith("out")}
        caplog.clear()
        main = importlib.import_module(f"centermask2.cli.{MAINS[script]}").main
        where = f"{script} {' '.join(map(str, args))}"
        rc = main([str(a) for a in args])  # raises (fails the test) where a user would see a traceback
        said = caplog.text + capsys.readouterr().err
        assert rc in codes, f"{where}: exit {rc}\n{said[-2000:]}"
        assert rc != 2 or "error" in said.lower(), where  # exit 2 says what is wrong
        after = {k: v for k, v in _listing(work).items() if not k.startswith("out")}
        assert after == before, f"{where} wrote outside its output folder: {set(after) ^ set(before)}"
        assert (work / "secret.txt").read_text() == "do not touch"
    assert len(cases) >= 25


def test_a_script_run_shows_no_traceback(hostile):
    """The same through a real process, once per script family."""
    work, files, ckpt = hostile
    for script, args in (
        ("preprocess_inputs_to_bin.py", ["--model", files["not_onnx"], "--images", files["images"],
                                         "--coco-json", files["escape"], "--output", work / "out"]),
        ("postprocess_bin_outputs.py", ["--outputs", files["raw"], "--info", files["bins"], "--output-dir",
                                        work / "out"]),
    ):
        proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                              cwd=work, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error: " in proc.stderr, proc.stderr


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
