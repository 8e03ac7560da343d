"""Offline .bin pipeline: preprocess_inputs_to_bin.py -> tester.py --bins -> postprocess_bin_outputs.py.

End to end on the golden cases with static 1344x1344 exports (results and AP as upstream with its
default padding: the models ignore theirs), plus the failure paths: bad input bins, missing / truncated output
bins, unwritable output folder, and a run killed with SIGKILL then resumed.
"""

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import centermask2.cli.tester as tester
from centermask2.contract import default_output_specs, model_output_specs
from centermask2.modeling import OUTPUT_NAMES
from centermask2.offline.layout import MANIFEST, BinImage, BinInfo, Manifest, output_path, write_array
from centermask2.offline.postprocess import OutputProblem, format_problems, resolve_manifest
from golden import (
    CASES,
    CONFIGS,
    LITE,
    ROOT,
    assert_results_match,
    case_info,
    postprocess_golden,
    preprocess_bins,
    root_script,
    run_bins,
    script_ok,
)

SIZE = (1344, 1344)

postprocess_bin_outputs = root_script("postprocess_bin_outputs.py")


# ---------------------------------------------------------------- helpers


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _complete_images(raw: Path, stems, base: int = 0) -> int:
    return sum(all(output_path(raw, s, k, base).is_file() for k in range(len(OUTPUT_NAMES))) for s in stems)


# ---------------------------------------------------------------- shared exports and bins


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bin pipeline")  # a path with a space


@pytest.fixture(scope="module")
def lite_u8(lite_static):
    return lite_static


@pytest.fixture(scope="module")
def lite_f32(exported_model):
    return exported_model(LITE, input_size=SIZE, input_dtype="float32")


@pytest.fixture(scope="module")
def lite_u8_b2(exported_model):
    return exported_model(LITE, input_size=SIZE, batch_size=2)


@pytest.fixture(scope="module")
def bins_u8(work):
    """uint8 bins of the golden images, made from the config (no model needed)."""
    root = CASES[LITE]
    return preprocess_bins(work / "bins_u8", root / "images", "--coco-json", root / "annotations_gt.json",
                       "--config-file", CONFIGS / case_info(LITE)["config"], "--input-size", "1344x1344",
                       "--input-dtype", "uint8")


@pytest.fixture(scope="module")
def bins_f32(work, lite_f32):
    """float32 bins of the golden images, settings from the model."""
    root = CASES[LITE]
    return preprocess_bins(work / "bins_f32", root / "images", "--coco-json", root / "annotations_gt.json",
                       "--model", lite_f32)


@pytest.fixture(scope="module")
def raw_u8(work, lite_u8, bins_u8):
    raw = work / "raw_u8"
    proc = script_ok(run_bins(lite_u8, bins_u8, raw))
    assert "images/s" in proc.stderr and "ms/image" in proc.stderr
    return raw


@pytest.fixture(scope="module")
def bins6(work, lite_u8):
    """Six images (copies of the two golden ones), for batching and interrupted runs."""
    images = work / "six images"
    images.mkdir()
    src = sorted((CASES[LITE] / "images").iterdir())
    for i in range(6):
        shutil.copy(src[i % 2], images / f"{i + 1:012d}.png")
    return preprocess_bins(work / "bins6", images, "--model", lite_u8)


@pytest.fixture(scope="module")
def raw6(work, lite_u8, bins6):
    raw = work / "raw6"
    script_ok(run_bins(lite_u8, bins6, raw))
    return raw


# ---------------------------------------------------------------- end to end


def test_uint8_end_to_end(work, raw_u8, bins_u8, lite_u8):
    manifest = Manifest.load(raw_u8)
    assert [o.name for o in manifest.outputs] == list(OUTPUT_NAMES)
    assert manifest.outputs == default_output_specs(50) == model_output_specs(lite_u8)
    assert manifest.index_base == 0 and manifest.model == str(lite_u8)
    stems = [im.stem for im in BinInfo.load(bins_u8).images]
    want = {f"{s}_{k}.bin" for s in stems for k in range(6)} | {MANIFEST}
    assert set(_files(raw_u8)) == want
    for spec in manifest.outputs:
        assert output_path(raw_u8, stems[0], spec.index).stat().st_size == spec.nbytes
    proc = postprocess_golden(raw_u8, bins_u8, work / "eval_u8")
    assert "images/s" in proc.stderr and "| task |" in proc.stdout


def test_float32_index_base_1_end_to_end(work, lite_f32, bins_f32):
    assert BinInfo.load(bins_f32).dtype == "float32"
    raw = work / "raw_f32"
    script_ok(run_bins(lite_f32, bins_f32, raw, "--index-base", "1"))
    names = set(_files(raw))
    assert "000000000001_1.bin" in names and "000000000001_6.bin" in names and "000000000001_0.bin" not in names
    postprocess_golden(raw, bins_f32, work / "eval_f32")
    # an engine that writes no manifest: the layout comes from the model, the numbering from --index-base
    (raw / MANIFEST).unlink()
    postprocess_golden(raw, bins_f32, work / "eval_f32_nomanifest", "--model", lite_f32, "--index-base", "1")


def test_static_batch2_model_fills_the_last_batch(work, lite_u8_b2, bins6, raw6):
    """Six bins through a batch-2 model (3 full runs), and five (the last batch filled)."""
    bins5 = work / "bins5"
    shutil.copytree(bins6, bins5)
    info = BinInfo.load(bins5)
    info.images = info.images[:5]
    info.save(bins5)
    manifest = Manifest.load(raw6)
    for bins, count in ((bins6, 6), (bins5, 5)):
        raw = work / f"{bins.name}_b2"
        script_ok(run_bins(lite_u8_b2, bins, raw))
        assert Manifest.load(raw).outputs == manifest.outputs
        assert len(_files(raw)) == 6 * count + 1
        for i in range(count):
            stem = f"{i + 1:012d}"
            for spec in manifest.outputs:
                ref = np.fromfile(output_path(raw6, stem, spec.index), spec.dtype)
                got = np.fromfile(output_path(raw, stem, spec.index), spec.dtype)
                np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4, err_msg=f"{stem} {spec.name}")


def test_killed_run_resumes_to_the_same_files(work, lite_u8, bins6, raw6):
    raw = work / "raw6_killed"
    stems = [im.stem for im in BinInfo.load(bins6).images]
    cmd = [sys.executable, str(ROOT / "tester.py"), "--model", str(lite_u8), "--bins", str(bins6),
           "--output", str(raw), "--threads", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _complete_images(raw, stems) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = _complete_images(raw, stems)
    assert 2 <= done < len(stems), f"{done} of {len(stems)} images were done when the run was killed"
    # what a kill in the middle of a write leaves behind, and a damaged output (of an image that
    # was done: not necessarily the first, the images need not finish in their order)
    (raw / f".{stems[-1]}_3.bin.abc123.tmp").write_bytes(b"partial")
    finished = [s for s in stems if _complete_images(raw, [s]) == 1]
    damaged = output_path(raw, finished[0], 3)
    damaged.write_bytes(damaged.read_bytes()[:100])
    proc = script_ok(run_bins(lite_u8, bins6, raw, "--resume"))
    assert f"{len(stems) - done + 1} images ({done - 1} already done)" in proc.stderr, proc.stderr
    assert _files(raw) == _files(raw6)


# ---------------------------------------------------------------- stage 2 failures


def test_wrong_size_input_bin_is_skipped(work, bins_u8, lite_u8, tmp_path, caplog):
    bins = tmp_path / "bins"
    shutil.copytree(bins_u8, bins)
    bad = bins / "000000000001.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    raw = tmp_path / "raw"
    with caplog.at_level(logging.INFO):
        rc = tester.main(["--model", str(lite_u8), "--bins", str(bins), "--output", str(raw), "--no-progress"])
    assert rc == 1
    assert "000000000001.bin" in caplog.text and "bytes" in caplog.text and "skipped" in caplog.text
    assert _complete_images(raw, ["000000000002"]) == 1
    assert not list(raw.glob("000000000001_*.bin"))


def test_bins_that_do_not_fit_the_model_fail_fast(bins_f32, lite_u8, tmp_path, caplog):
    rc = tester.main(["--model", str(lite_u8), "--bins", str(bins_f32), "--output", str(tmp_path / "raw")])
    assert rc == 2
    assert "float32" in caplog.text and "uint8" in caplog.text
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").glob("*.bin"))


def test_output_that_is_a_file_is_a_clear_error(bins_u8, lite_u8, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = tester.main(["--model", str(lite_u8), "--bins", str(bins_u8), "--output", str(blocker / "raw")])
    assert rc == 2
    assert "not writable" in caplog.text and str(blocker / "raw") in caplog.text


def test_output_dir_not_writable(bins_u8, lite_u8, read_only_dir, caplog):
    """An existing folder no file can be created in (conftest's read_only_dir: as root too)."""
    rc = tester.main(["--model", str(lite_u8), "--bins", str(bins_u8), "--output", str(read_only_dir)])
    assert rc == 2
    assert "not writable" in caplog.text and str(read_only_dir) in caplog.text and "Permission denied" in caplog.text
    assert not any(read_only_dir.iterdir())


def test_bins_mode_argument_errors(bins_u8, lite_u8, tmp_path, caplog):
    assert tester.main(["--bins", str(bins_u8), "--output", str(tmp_path / "r")]) == 2
    assert "--model" in caplog.text
    assert tester.main(["--model", str(lite_u8), "--bins", str(bins_u8), "--output", str(tmp_path / "r"),
                        "--images", str(tmp_path)]) == 2
    assert "--images" in caplog.text
    assert tester.main(["--bins", str(tmp_path / "nothing"), "--model", str(lite_u8),
                        "--output", str(tmp_path / "r")]) == 2
    assert "bin_info.json" in caplog.text
    assert tester.main(["--output", str(tmp_path / "r"), "--model", str(lite_u8), "--backend", "onnx"]) == 2
    assert "--images" in caplog.text


# ---------------------------------------------------------------- stage 3 failures


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_missing_or_truncated_outputs(raw_u8, bins_u8, tmp_path, capsys, caplog, damage):
    raw = tmp_path / "raw"
    shutil.copytree(raw_u8, raw)
    victim = raw / "000000000001_3.bin"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-4])
    else:
        victim.unlink()
    (raw / "000000000002_0.bin").unlink()
    ann = CASES[LITE] / "annotations_gt.json"
    args = ["--outputs", str(raw), "--info", str(bins_u8 / "bin_info.json"), "--coco-json", str(ann),
            "--no-progress"]
    out = tmp_path / "strict"
    assert postprocess_bin_outputs.main([*args, "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err + caplog.text  # the error line: stderr when run as a script
    assert "--allow-missing" in err
    assert "000000000001_3.bin" in caplog.text and "000000000002_0.bin: missing" in caplog.text
    assert ("bytes, expected" if damage == "truncate" else "000000000001_3.bin: missing") in caplog.text
    assert not (out / "metrics.json").exists() and not (out / "coco_instances_results.json").exists()

    # one image complete again: --allow-missing scores the other with the images that remain
    shutil.copy(raw_u8 / "000000000002_0.bin", raw / "000000000002_0.bin")
    out = tmp_path / "lenient"
    assert postprocess_bin_outputs.main([*args, "--output-dir", str(out), "--allow-missing"]) == 0
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == {2}
    assert (out / "metrics.json").is_file()
    assert "lower bound" in caplog.text


def test_postprocess_without_manifest_needs_the_model(raw_u8, bins_u8, tmp_path, capsys, caplog):
    raw = tmp_path / "raw"
    shutil.copytree(raw_u8, raw)
    (raw / MANIFEST).unlink()
    rc = postprocess_bin_outputs.main(["--outputs", str(raw), "--info", str(bins_u8), "--output-dir",
                                       str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and "--model" in capsys.readouterr().err + caplog.text
    with pytest.raises(FileNotFoundError, match="--model"):
        resolve_manifest(raw)


def test_postprocess_without_annotations_writes_results(raw_u8, bins_u8, tmp_path):
    out = tmp_path / "out"
    rc = postprocess_bin_outputs.main(["--outputs", str(raw_u8), "--info", str(bins_u8), "--output-dir", str(out),
                                       "--no-progress"])
    assert rc == 0
    expected = json.loads((CASES[LITE] / "coco_instances_results.json").read_text())
    assert_results_match(expected, json.loads((out / "coco_instances_results.json").read_text()))
    assert not (out / "metrics.json").exists()


def test_manifest_and_index_base_must_agree(raw_u8):
    assert resolve_manifest(raw_u8, index_base=0).index_base == 0
    with pytest.raises(ValueError, match="numbered from 0"):
        resolve_manifest(raw_u8, index_base=1)


@pytest.mark.parametrize("case", [LITE, "V_39"])
def test_upstream_raw_outputs_through_stage3(case, tmp_path):
    """Upstream's own network outputs, written as output bins, give upstream's results and metrics."""
    root = CASES[case]
    npz = np.load(root / "raw_outputs.npz")
    gt = json.loads((root / "annotations_gt.json").read_text())
    specs = default_output_specs(50)
    raw = tmp_path / "raw"
    Manifest(outputs=specs, index_base=1).save(raw)
    info = BinInfo(dtype="uint8", shape=[1, 3, 1344, 1344], input_format="BGR", min_size=600, max_size=1000)
    for im in gt["images"]:
        key, stem = str(im["id"]), Path(im["file_name"]).stem
        n = npz[f"{key}_boxes"].shape[0]
        for spec in specs[:-1]:
            value = np.zeros(spec.shape, spec.dtype)
            value[0, :n] = npz[f"{key}_{spec.name}"]
            write_array(value, output_path(raw, stem, spec.index, 1))
        write_array(np.array([n], np.int64), output_path(raw, stem, specs[-1].index, 1))
        _, h, w = npz[f"{key}_input"].shape
        info.images.append(BinImage(image_id=im["id"], file_name=im["file_name"], stem=stem, height=im["height"],
                                    width=im["width"], resized_height=h, resized_width=w, bin=f"{stem}.bin",
                                    sizes_bin=f"image_sizes/{stem}.bin"))
    info.save(tmp_path)
    out = tmp_path / "out"
    rc = postprocess_bin_outputs.main(["--outputs", str(raw), "--info", str(tmp_path), "--coco-json",
                                       str(root / "annotations_gt.json"), "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    expected = json.loads((root / "coco_instances_results.json").read_text())
    report = assert_results_match(expected, json.loads((out / "coco_instances_results.json").read_text()))
    assert report["matched"] == len(expected) and report["box_diff_max"] < 1e-3 and report["mask_iou_min"] == 1.0
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((root / "metrics_gt.json").read_text())
    for task in ("bbox", "segm"):
        for key, value in want[task].items():
            assert got[task][key] == pytest.approx(value, abs=1e-6), (task, key)


def test_problem_list_is_capped():
    problems = [OutputProblem(f"img{i}_0.bin", "missing", f"img{i}") for i in range(25)]
    text = format_problems(problems)
    assert "img19_0.bin: missing" in text and "img20_0.bin" not in text and "and 5 more" in text


def test_resume_refuses_outputs_of_another_model(raw_u8, bins_u8, lite_u8, tmp_path):
    """Same output layout, other model file: resuming would mix two models' outputs."""
    raw = tmp_path / "raw"
    shutil.copytree(raw_u8, raw)
    other = onnx.load(str(lite_u8))
    entry = other.metadata_props.add()
    entry.key, entry.value = "note", "another model"
    onnx.save(other, str(tmp_path / "other.onnx"))
    proc = run_bins(tmp_path / "other.onnx", bins_u8, raw, "--resume")
    assert proc.returncode == 2 and "another model file" in proc.stderr, proc.stderr
    script_ok(run_bins(lite_u8, bins_u8, raw, "--resume"))  # the same model resumes
