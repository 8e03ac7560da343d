"""centermask2.cli.common: argument types and the one error -> exit code mapping."""

import argparse
import logging

import pytest

from centermask2.cli.common import PROVIDER_CHOICES, hw_type, positive_int, run_main
from centermask2.engine.onnxruntime_backend import PROVIDERS
from centermask2.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    InputError,
    ItemError,
    MissingFileError,
    OutputError,
)


def test_hw_type():
    assert hw_type("1344x1344") == (1344, 1344)
    assert hw_type("800X1216") == (800, 1216)
    for bad in ("big", "0x10", "10x", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError, match="HxW|positive"):
            hw_type(bad)


def test_positive_int():
    assert positive_int("3") == 3
    for bad, message in (("0", "must be >= 1, got 0"), ("-1", "must be >= 1, got -1"), ("two", "'two' is not an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive_int(bad)


def test_provider_choices_come_from_the_backend():
    assert PROVIDER_CHOICES == tuple(PROVIDERS)


def _raiser(exc):
    def main(argv):
        raise exc

    return main


@pytest.mark.parametrize(
    "exc,code",
    [
        (InputError("bad --input-size"), EXIT_BAD_INPUT),
        (MissingFileError("no such file"), EXIT_BAD_INPUT),
        (OutputError("read-only"), EXIT_BAD_INPUT),
        (ItemError("one image failed"), EXIT_ITEMS_FAILED),
        (OSError(28, "No space left on device"), EXIT_ITEMS_FAILED),
    ],
)
def test_errors_map_to_exit_codes(exc, code, caplog):
    with caplog.at_level(logging.ERROR):
        assert run_main(_raiser(exc), []) == code
    assert "error: " in caplog.text and str(exc.args[-1]) in caplog.text


def test_bugs_keep_their_traceback():
    """A KeyError from a bug is not turned into 'bad input' (exit 2)."""
    with pytest.raises(KeyError, match="oops"):
        run_main(_raiser(KeyError("oops")), [])
    with pytest.raises(ValueError, match="a plain ValueError is a bug"):
        run_main(_raiser(ValueError("a plain ValueError is a bug, not a user error")), [])


def test_ctrl_c_gives_130_and_the_resume_hint(capsys):
    assert run_main(_raiser(KeyboardInterrupt()), [], resumable=True) == EXIT_INTERRUPTED
    assert "--resume" in capsys.readouterr().err
    assert run_main(_raiser(KeyboardInterrupt()), []) == EXIT_INTERRUPTED
    assert "--resume" not in capsys.readouterr().err


def test_argparse_exit_codes():
    def main(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--n", type=positive_int)
        p.parse_args(argv)
        return 0

    assert run_main(main, ["--n", "0"]) == EXIT_BAD_INPUT
    assert run_main(main, ["--help"]) == 0


SCRIPTS = ["tester", "export_onnx", "preprocess", "postprocess", "visualizer"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_turns_ctrl_c_into_130(name, monkeypatch, capsys):
    import importlib

    module = importlib.import_module(f"centermask2.cli.{name}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "setup_logging", interrupted)
    assert module.main(_minimal_args(name)) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert ("--resume" in err) == (name in ("tester", "preprocess"))


def _minimal_args(name):
    return {
        "tester": ["--images", "x", "--output-dir", "o"],
        "export_onnx": ["--config-file", "c.yaml", "--output", "m.onnx"],
        "preprocess": ["--images", "x", "--output", "o"],
        "postprocess": ["--results", "r.json", "--coco-json", "a.json"],
        "visualizer": ["--images", "x", "--output-dir", "o"],
    }[name]


@pytest.mark.parametrize("name", ["tester", "export_onnx", "preprocess", "visualizer"])
def test_options_after_the_overrides_are_named(name, caplog):
    import importlib

    module = importlib.import_module(f"centermask2.cli.{name}")
    args = _minimal_args(name) + ["MODEL.DEVICE", "cpu", "--no-progress" if name != "export_onnx" else "--dynamic"]
    if name in ("tester", "visualizer", "preprocess"):
        args = ["--config-file", "c.yaml", *args]
    with caplog.at_level(logging.ERROR):
        assert module.main(args) == EXIT_BAD_INPUT
    assert "came after the KEY VALUE config overrides" in caplog.text


def test_tester_refuses_dataset_with_images(caplog):
    import centermask2.cli.tester as tester

    with caplog.at_level(logging.ERROR):
        assert tester.main(["--dataset", "coco_2017_val", "--images", "x", "--output-dir", "o"]) == EXIT_BAD_INPUT
    assert "--dataset names both" in caplog.text


@pytest.mark.parametrize(
    "name,args",
    [
        ("tester", ["--batch-size", "0"]),
        ("tester", ["--threads", "0"]),
        ("preprocess", ["--workers", "0"]),
        ("visualizer", ["--max-images", "0"]),
        ("export_onnx", ["--batch-size", "0"]),
    ],
)
def test_counts_must_be_positive(name, args, capsys):
    import importlib

    module = importlib.import_module(f"centermask2.cli.{name}")
    assert module.main(_minimal_args(name) + args) == EXIT_BAD_INPUT
    assert "must be >= 1" in capsys.readouterr().err


# ---- resource arguments: bounded, with the reason -----------------------------------------------------------


def test_resource_counts_are_bounded_with_the_reason():
    import os

    from centermask2.cli.common import (
        MAX_BATCH_SIZE,
        MAX_DETECTIONS,
        MAX_RAY_ACTORS,
        batch_size_int,
        max_detections_int,
        max_threads,
        ray_actors_int,
        threads_int,
        workers_int,
    )

    cpus = os.cpu_count() or 1
    assert max_threads() == max(4 * cpus, 64)
    assert threads_int(str(max_threads())) == max_threads() and threads_int("1") == 1
    cases = [
        (threads_int, "100000", f"100000 is more than {max_threads()} threads"),
        (workers_int, "100000", "100000 is more than"),
        (batch_size_int, str(MAX_BATCH_SIZE + 1), f"{MAX_BATCH_SIZE + 1} is more than {MAX_BATCH_SIZE} images"),
        (max_detections_int, "1000000000", f"1000000000 is more than {MAX_DETECTIONS} rows per image"),
        (ray_actors_int, str(MAX_RAY_ACTORS + 1), f"is more than {MAX_RAY_ACTORS} actors"),
        (threads_int, "0", "must be >= 1, got 0"),
        (max_detections_int, "0", "must be >= 1, got 0"),
    ]
    for kind, text, message in cases:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            kind(text)
    assert MAX_DETECTIONS == 10000 and MAX_BATCH_SIZE == 1024


@pytest.mark.parametrize(
    "name,args,message",
    [
        ("tester", ["--threads", "100000"], "argument --threads: 100000 is more than"),
        ("tester", ["--batch-size", "5000"], "argument --batch-size: 5000 is more than 1024 images"),
        ("tester", ["--ray-actors", "100000"], "argument --ray-actors: 100000 is more than"),
        ("preprocess", ["--workers", "100000"], "argument --workers: 100000 is more than"),
        ("export_onnx", ["--max-detections", "1000000000"], "argument --max-detections: 1000000000 is more than 10000"),
        ("export_onnx", ["--batch-size", "5000"], "argument --batch-size: 5000 is more than 1024 images"),
        ("export_onnx", ["--opset", "fifteen"], "argument --opset: 'fifteen' is not an integer"),
    ],
)
def test_scripts_bound_their_resource_arguments(name, args, message, capsys):
    import importlib

    module = importlib.import_module(f"centermask2.cli.{name}")
    assert module.main(_minimal_args(name) + args) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_train_bounds_threads_and_workers(capsys):
    from centermask2.cli import train

    assert train.main(["--config-file", "c.yaml", "--output-dir", "o", "--threads", "100000"]) == EXIT_BAD_INPUT
    assert "argument --threads: 100000 is more than" in capsys.readouterr().err
    assert train.main(["--config-file", "c.yaml", "--output-dir", "o", "--num-workers", "100000"]) == EXIT_BAD_INPUT
    assert "argument --num-workers: 100000 is more than" in capsys.readouterr().err


# ---- a full disk ----------------------------------------------------------------------------------------------


def test_a_full_disk_names_the_file_and_the_fix(caplog):
    import errno

    exc = OSError(errno.ENOSPC, "No space left on device", "/data/out/coco_instances_results.json")
    with caplog.at_level(logging.ERROR):
        assert run_main(_raiser(exc), []) == EXIT_ITEMS_FAILED
    assert "error: No space left on device writing '/data/out/coco_instances_results.json'" in caplog.text
    assert "free some space" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_main(_raiser(OSError(errno.EDQUOT, "Disk quota exceeded")), []) == EXIT_ITEMS_FAILED
    assert "Disk quota exceeded" in caplog.text and "free some space" in caplog.text


def test_opsets_outside_what_the_exporter_writes_are_refused():
    from centermask2.errors import InputError
    from centermask2.export.onnx import MAX_RUNNABLE_OPSET, check_opset_range, highest_opset

    assert highest_opset() <= MAX_RUNNABLE_OPSET == 21
    for opset in (16, 17, 18, 19, highest_opset()):
        check_opset_range(opset)
    for opset, why in ((15, "RoiAlign with half_pixel"), (22, "opset 22 renews RoiAlign"), (99, "the default is 17")):
        with pytest.raises(InputError, match=f"--opset {opset} is not supported: this exporter writes opsets 16 to .*{why}"):
            check_opset_range(opset)
