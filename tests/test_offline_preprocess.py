"""preprocess_inputs_to_bin.py: bins equal upstream's network input, bad images are listed, runs resume."""

import contextlib
import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image, ImageOps

import centermask2.cli.preprocess as script
from centermask2.data import InputSpec, image_size, list_images, load_and_resize, pad_batch
from centermask2.data.transforms import get_resize_shape, read_image, resize_image
from centermask2.engine.executors import PoolExecutor
from centermask2.offline.layout import INFO_JSON, INFO_TXT, SIZES_DIR, BinInfo, read_array
from centermask2.offline.preprocess import PreprocessSpec, preprocess_to_bins
from golden import CASES, CONFIGS, LITE, ROOT, case_info

CONFIG = str(CONFIGS / case_info(LITE)["config"])  # MIN/MAX_SIZE_TEST 600/1000
SIZE = "1344x1344"
SIZES_SHAPE = (1, 2)


def _cfg_args(images, out, *extra, size=SIZE):
    return ["--config-file", CONFIG, "--input-size", size, "--images", str(images), "--output", str(out),
            "--no-progress", *extra]


def _run(caplog, args):
    """main() in this process; returns (exit status, log text + what argparse wrote to stderr)."""
    caplog.clear()
    stderr = io.StringIO()
    with caplog.at_level(logging.INFO), contextlib.redirect_stderr(stderr):
        rc = script.main([str(a) for a in args])
    return rc, caplog.text + stderr.getvalue()


def _bin(out, stem, dtype="uint8", hw=(1344, 1344)):
    return read_array(Path(out) / f"{stem}.bin", dtype, (1, 3, *hw))


def _sizes(out, stem):
    return tuple(int(v) for v in read_array(Path(out) / SIZES_DIR / f"{stem}.bin", "int64", SIZES_SHAPE)[0])


def _reference(path, min_size=600, max_size=1000, pad=(1344, 1344)):
    """The network input of the reference path (tester.py), [1, 3, H, W] uint8."""
    spec = InputSpec(min_size=min_size, max_size=max_size, pad_to=pad)
    batch, _ = pad_batch([load_and_resize(path, spec)[0]], spec)
    return batch


def _file_set(folder):
    """{relative path: bytes} of everything under folder; bin_info.info with the folder name masked."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == INFO_TXT:
                data = data.replace(folder.as_posix().encode(), b"<BINS>")
            files[p.relative_to(folder).as_posix()] = data
    return files


def _save(array, path, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def _noise(h, w, seed, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _fake_onnx(path, *, size="1344x1344", dynamic=False, dtype="uint8", batch=1, min_size=600, max_size=1000):
    """A tiny ONNX file carrying the metadata an exported model has (read_metadata reads only that)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["boxes"])], "fake",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("boxes", TensorProto.UINT8, [1, 3, 32, 32])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {
        "centermask2.config": "INPUT:\n  FORMAT: BGR\n",
        "centermask2.class_names": json.dumps(["thing"]),
        "centermask2.category_ids": json.dumps([1]),
        "centermask2.pixel_mean": json.dumps([103.53, 116.28, 123.675]),
        "centermask2.pixel_std": json.dumps([1.0, 1.0, 1.0]),
        "centermask2.input_format": "BGR",
        "centermask2.min_size_test": str(min_size),
        "centermask2.max_size_test": str(max_size),
        "centermask2.size_divisibility": "32",
        "centermask2.input_mode": "dynamic" if dynamic else "static",
        "centermask2.input_size": "" if dynamic else size,
        "centermask2.batch_size": "" if dynamic else str(batch),
        "centermask2.input_dtype": dtype,
        "centermask2.max_detections": "50",
        "centermask2.output_names": json.dumps(["boxes"]),
        "centermask2.version": "test",
    })
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """40 small JPEGs of varied shapes, numbered as COCO files."""
    folder = tmp_path_factory.mktemp("small images")  # a path with a space
    for i in range(40):
        h, w = (48, 64) if i % 3 else (64, 40)
        _save(_noise(h, w, i), folder / f"{i + 1:012d}.jpg", quality=90)
    return folder


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_golden_bins_equal_upstream_input(tmp_path, caplog, dtype):
    out = tmp_path / "bins"
    rc, log = _run(caplog, _cfg_args(CASES[LITE] / "images", out, "--coco-json", CASES[LITE] / "annotations.json",
                                     "--input-dtype", dtype))
    assert rc == 0, log
    raw = np.load(CASES[LITE] / "raw_outputs.npz")
    ann = json.loads((CASES[LITE] / "annotations.json").read_text())
    info = BinInfo.load(out)
    assert (info.dtype, info.shape, info.input_format, info.min_size, info.max_size) == (
        dtype, [1, 3, 1344, 1344], "BGR", 600, 1000)
    assert [im.image_id for im in info.images] == [im["id"] for im in ann["images"]]
    for im, entry in zip(info.images, ann["images"]):
        want = raw[f"{entry['id']}_input"]  # [3, h, w] uint8 BGR, what upstream's network saw
        h, w = want.shape[1:]
        got = _bin(out, im.stem, dtype)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[0, :, :h, :w], want.astype(dtype))
        assert not got[0, :, h:, :].any() and not got[0, :, :, w:].any()
        assert _sizes(out, im.stem) == (h, w) == (im.resized_height, im.resized_width)
        assert (im.height, im.width) == (entry["height"], entry["width"])
        assert (im.file_name, im.bin, im.sizes_bin) == (entry["file_name"], f"{im.stem}.bin",
                                                         f"{SIZES_DIR}/{im.stem}.bin")
    lines = (out / INFO_TXT).read_text().splitlines()
    assert lines == [f"{i} {(out / im.bin).as_posix()} 1344 1344" for i, im in enumerate(info.images)]
    assert "2 image(s) written, 0 skipped" in log and "bytes per image" in log and "images/s" in log


def test_model_metadata_drives_the_bins(tmp_path, caplog):
    by_config = tmp_path / "by_config"
    assert _run(caplog, _cfg_args(CASES[LITE] / "images", by_config))[0] == 0
    model = _fake_onnx(tmp_path / "static.onnx")
    by_model = tmp_path / "by_model"
    rc, log = _run(caplog, ["--model", model, "--images", CASES[LITE] / "images", "--output", by_model, "--no-progress"])
    assert rc == 0, log
    a, b = _file_set(by_config), _file_set(by_model)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k != INFO_JSON)
    assert BinInfo.load(by_model).model == str(model)

    # the model's dtype and resize rule are used
    f32 = _fake_onnx(tmp_path / "f32.onnx", size="640x960", dtype="float32", min_size=320, max_size=640)
    rc, log = _run(caplog, ["--model", f32, "--images", CASES[LITE] / "images", "--output", tmp_path / "f32",
                            "--no-progress"])
    assert rc == 0, log
    info = BinInfo.load(tmp_path / "f32")
    assert (info.dtype, info.shape, info.min_size, info.max_size) == ("float32", [1, 3, 640, 960], 320, 640)
    for im in info.images:
        ref = _reference(CASES[LITE] / "images" / im.file_name, 320, 640, (640, 960))
        np.testing.assert_array_equal(_bin(tmp_path / "f32", im.stem, "float32", (640, 960)), ref.astype(np.float32))

    # a dynamic model needs --input-size (the padding size)
    dyn = _fake_onnx(tmp_path / "dynamic.onnx", dynamic=True)
    rc, log = _run(caplog, ["--model", dyn, "--images", CASES[LITE] / "images", "--output", tmp_path / "dyn", "--no-progress"])
    assert rc == 2 and "dynamic model" in log and "--input-size" in log and "static" in log
    assert not (tmp_path / "dyn").exists()
    rc, log = _run(caplog, ["--model", dyn, "--input-size", SIZE, "--images", CASES[LITE] / "images",
                            "--output", tmp_path / "dyn", "--no-progress"])
    assert rc == 0, log
    assert all(v == b[k] for k, v in _file_set(tmp_path / "dyn").items() if k != INFO_JSON)


@pytest.mark.parametrize(
    "model_kwargs,extra,message",
    [
        ({}, ["--input-size", "640x640"], "contradicts the static model"),
        ({}, ["--input-dtype", "float32"], "contradicts"),
        ({"batch": 2}, [], "batch size 2"),
        ({}, ["--config-file", CONFIG], "carries its own settings"),
    ],
)
def test_model_argument_conflicts(tmp_path, caplog, model_kwargs, extra, message):
    model = _fake_onnx(tmp_path / "m.onnx", **model_kwargs)
    rc, log = _run(caplog, ["--model", model, "--images", CASES[LITE] / "images", "--output", tmp_path / "out", *extra])
    assert rc == 2 and message in log, log
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "missing.onnx"], "missing.onnx"),
        (["--config-file", CONFIG, "--input-size", "1000x1000"], "multiple of"),
        (["--config-file", CONFIG, "--input-size", "big"], "HxW"),
        (["--config-file", CONFIG], "--input-size"),
        (["--config-file", CONFIG, "--input-size", SIZE, "INPUT.MIN_SIZE", "600"], "INPUT.MIN_SIZE"),
        (["--config-file", CONFIG, "--input-size", SIZE, "--workers", "0"], "--workers"),
        ([], "--model"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, caplog, args, message):
    out = tmp_path / "out"
    rc, log = _run(caplog, ["--images", CASES[LITE] / "images", "--output", out, "--no-progress", *args])
    assert rc == 2 and message in log, log
    assert not out.exists()


def test_argparse_errors_return_2(tmp_path, capsys):
    assert script.main(["--images", str(tmp_path)]) == 2  # --output missing
    assert "error: the following arguments are required: --output" in capsys.readouterr().err
    assert script.main(["--help"]) == 0


def test_unreadable_and_unusual_images(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    _save(_noise(120, 160, 0), images / "a_good.png")
    _save(_noise(90, 70, 1, channels=1), images / "b_gray.png")
    _save(_noise(80, 100, 2, channels=4), images / "c_rgba.png")
    Image.fromarray(_noise(100, 80, 3)).convert("CMYK").save(images / "d_cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise when displayed
    _save(_noise(60, 100, 4), images / "e_exif.jpg", exif=exif.tobytes(), quality=95)
    _save(_noise(300, 5000, 5), images / "f_wide.png")
    _save(_noise(200, 200, 6), images / "g_corrupt.jpg", quality=90)
    (images / "g_corrupt.jpg").write_bytes((images / "g_corrupt.jpg").read_bytes()[:400])
    (images / "h_empty.jpg").write_bytes(b"")
    (images / "i_text.jpg").write_text("this is not an image\n")
    out = tmp_path / "bins"
    out.mkdir()
    (out / "g_corrupt.bin").write_bytes(b"stale bin of an earlier run")

    rc, log = _run(caplog, _cfg_args(images, out))
    assert rc == 1, log
    info = BinInfo.load(out)
    records = list_images(images)
    ok = [r for r in records if r.file_name[0] in "abcdef"]
    assert [im.file_name for im in info.images] == [r.file_name for r in ok]
    assert [im.image_id for im in info.images] == [r.image_id for r in ok]  # ids as list_images gives them
    for im, rec in zip(info.images, ok):
        np.testing.assert_array_equal(_bin(out, im.stem), _reference(rec.path), err_msg=im.file_name)
        assert (im.height, im.width) == read_image(rec.path).shape[:2] == image_size(rec.path)
    by_name = {im.file_name: im for im in info.images}
    # EXIF orientation 6: the 60x100 pixels become a 100x60 portrait image, rotated as PIL displays it
    assert (by_name["e_exif.jpg"].height, by_name["e_exif.jpg"].width) == (100, 60)
    with Image.open(images / "e_exif.jpg") as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))[:, :, ::-1]
    rh, rw = get_resize_shape(100, 60, 600, 1000)
    np.testing.assert_array_equal(_bin(out, "e_exif")[0, :, :rh, :rw], resize_image(upright, rh, rw).transpose(2, 0, 1))
    assert _sizes(out, "f_wide") == (60, 1000)
    # bad ones listed with their reasons, nothing of them left behind
    for name, reason in [("g_corrupt.jpg", "truncated"), ("h_empty.jpg", "empty"), ("i_text.jpg", "cannot identify")]:
        assert f"{name}: " in log and reason in log, (name, log)
        assert not (out / f"{Path(name).stem}.bin").exists()
        assert not (out / SIZES_DIR / f"{Path(name).stem}.bin").exists()
    assert "6 image(s) written, 0 skipped (already done), 3 failed" in log


def test_image_too_large_for_the_input_size_fails_alone(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    _save(_noise(100, 100, 0), images / "square.png")  # -> 600x600, fits 640x640
    _save(_noise(480, 640, 1), images / "landscape.png")  # -> 600x800, does not
    rc, log = _run(caplog, _cfg_args(images, tmp_path / "bins", size="640x640"))
    assert rc == 1
    assert "smaller than MAX_SIZE_TEST" in log
    assert "landscape.png: " in log and "600x800" in log and "640x640" in log
    assert [im.file_name for im in BinInfo.load(tmp_path / "bins").images] == ["square.png"]


def test_duplicate_stems_are_refused(tmp_path, caplog):
    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        _save(_noise(32, 32, 0), images / sub / "x.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a/x.png"}, {"id": 2, "file_name": "b/x.png"}],
                               "categories": []}))
    rc, log = _run(caplog, _cfg_args(images, tmp_path / "bins", "--coco-json", ann))
    assert rc == 2 and "'a/x.png' and 'b/x.png'" in log
    assert not (tmp_path / "bins").exists()

    _save(_noise(32, 32, 0), images / "y.png")
    _save(_noise(32, 32, 0), images / "y.jpg")
    rc, log = _run(caplog, _cfg_args(images, tmp_path / "bins"))
    assert rc == 2 and "y.bin" in log


def test_coco_subfolders_and_ids(tmp_path, caplog):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _save(_noise(40, 30, 0), images / "sub" / "p.png")
    _save(_noise(30, 40, 1), images / "q.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "q.png"}, {"id": 3, "file_name": "sub/p.png"}]}))
    rc, log = _run(caplog, _cfg_args(images, tmp_path / "bins", "--coco-json", ann))
    assert rc == 0, log
    info = BinInfo.load(tmp_path / "bins")
    assert [(im.image_id, im.file_name, im.bin) for im in info.images] == [(7, "q.png", "q.bin"), (3, "sub/p.png", "p.bin")]


def test_output_not_writable(read_only_dir, caplog):
    """An existing folder no file can be created in (conftest's read_only_dir: as root too)."""
    rc, log = _run(caplog, _cfg_args(CASES[LITE] / "images", read_only_dir))
    assert rc == 2 and str(read_only_dir) in log and "not writable" in log and "Permission denied" in log
    assert not any(read_only_dir.iterdir())


def test_output_under_a_file(tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    rc, log = _run(caplog, _cfg_args(CASES[LITE] / "images", tmp_path / "file" / "bins"))
    assert rc == 2 and str(tmp_path / "file" / "bins") in log and "not writable" in log
    rc, log = _run(caplog, _cfg_args(CASES[LITE] / "images", tmp_path / "file"))
    assert rc == 2 and "not a folder" in log


def test_interrupted_run_resumes_to_identical_files(tmp_path, caplog, small_images):
    reference = tmp_path / "uninterrupted"
    rc, log = _run(caplog, _cfg_args(small_images, reference, "--workers", "1"))
    assert rc == 0, log
    want = _file_set(reference)
    assert len([k for k in want if k.endswith(".bin") and "/" not in k]) == 40

    out = tmp_path / "interrupted"
    cmd = [sys.executable, str(ROOT / "preprocess_inputs_to_bin.py"), *_cfg_args(small_images, out, "--workers", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(list(out.glob("*.bin"))) >= 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done_before = len(list(out.glob("*.bin")))
    assert 3 <= done_before < 40
    assert not (out / INFO_JSON).exists()  # an interrupted folder never looks complete
    # the interrupted run recorded its settings when it started: resuming with others is refused
    rc, log = _run(caplog, _cfg_args(small_images, out, "--resume", "INPUT.MIN_SIZE_TEST", "640"))
    assert rc == 2 and "cannot --resume" in log and "min_size: " in log and "640 now" in log, log
    assert len(list(out.glob("*.bin"))) == done_before
    # what a kill in the middle of a write leaves, and a damaged bin
    (out / ".000000000040.bin.abc123_x.tmp").write_bytes(b"partial")
    (out / SIZES_DIR / ".000000000040.bin.k9j8h7g6.tmp").write_bytes(b"")
    first = sorted(out.glob("*.bin"))[0]
    first.write_bytes(first.read_bytes()[:1000])

    rc, log = _run(caplog, _cfg_args(small_images, out, "--resume"))
    assert rc == 0, log
    skipped = int(re.search(r"(\d+) skipped", log).group(1))
    assert done_before - 2 <= skipped <= done_before - 1  # the damaged bin (and a bin without its sizes) redone
    assert _file_set(out) == want

    # resuming a finished folder skips everything and changes nothing
    rc, log = _run(caplog, _cfg_args(small_images, out, "--resume"))
    assert rc == 0 and "0 image(s) written, 40 skipped" in log
    assert _file_set(out) == want
    # but not with other settings
    rc, log = _run(caplog, _cfg_args(small_images, out, "--resume", "--input-dtype", "float32"))
    assert rc == 2 and "cannot --resume" in log


def test_workers_give_identical_files(tmp_path, caplog, small_images):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(caplog, _cfg_args(small_images, one, "--workers", "1"))[0] == 0
    rc, log = _run(caplog, _cfg_args(small_images, two, "--workers", "2"))
    assert rc == 0 and "2 worker(s)" in log
    assert _file_set(one) == _file_set(two)


def test_spawned_workers_give_identical_files(tmp_path, small_images):
    records = list_images(small_images)[:6]
    spec = PreprocessSpec(InputSpec(min_size=600, max_size=1000, pad_to=(1344, 1344)), dtype="uint8")
    a = preprocess_to_bins(records, tmp_path / "a", spec, progress=False)
    with PoolExecutor(2, start_method="spawn") as pool:
        b = preprocess_to_bins(records, tmp_path / "b", spec, executor=pool, progress=False)
    assert (a.num_images, b.num_images, a.failed, b.failed) == (6, 6, [], [])
    assert a.info.images == b.info.images
    assert _file_set(tmp_path / "a") == _file_set(tmp_path / "b")
