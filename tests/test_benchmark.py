"""The benchmarks' harness (centermask2.benchmark) with fake calls and a fake clock: interleaved
rounds, warm-up, medians, the table and the header; the runtime rows of one model; the command
lines of tools/benchmark.py and tools/make_shapes_dataset.py (no model is run)."""

import json

import pytest

from centermask2.benchmark import (
    Timing,
    format_table,
    header,
    measure,
    runtime_targets,
    summarize,
    timing_table,
)
from centermask2.cpu import cpu_description
from centermask2.errors import InputError
from golden import root_script


class FakeClock:
    """A clock the fake calls advance by their cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_measure_interleaves_rounds_and_drops_the_warmup():
    clock, calls = FakeClock(), []
    costs = {"a": [5.0, 1.0, 3.0, 2.0], "b": [7.0, 10.0, 20.0, 30.0], "c": [0.5, 0.5, 0.5, 0.5]}

    def call(name):
        def run():
            calls.append(name)
            clock.now += costs[name][sum(c == name for c in calls) - 1]
        return run

    before = []
    times = measure({name: call(name) for name in costs}, runs=3, warmup=1, clock=clock, before=before.append)
    assert calls == ["a", "b", "c"] * 4  # each round runs every candidate once, in order
    assert before == calls  # the untimed hook, before each call
    assert times == {"a": [1.0, 3.0, 2.0], "b": [10.0, 20.0, 30.0], "c": [0.5, 0.5, 0.5]}
    stats = summarize(times)
    assert (stats["a"].median, stats["a"].min, stats["a"].max, stats["a"].runs) == (2.0, 1.0, 3.0, 3)
    assert Timing((4.0, 1.0, 2.0, 3.0)).median == 2.5  # an even count: the mean of the middle two


def test_measure_without_warmup_records_every_round_and_refuses_no_runs():
    clock = FakeClock()

    def tick():
        clock.now += 1.0

    assert measure({"x": tick}, runs=2, warmup=0, clock=clock) == {"x": [1.0, 1.0]}
    with pytest.raises(InputError, match="runs"):
        measure({"x": tick}, runs=0)
    with pytest.raises(InputError, match="warmup"):
        measure({"x": tick}, runs=1, warmup=-1)


def test_format_table_aligns_numbers_right_and_text_left():
    table = format_table(["name", "ms", "AP"], [["long name", "12.5", 60.654], ["b", "3.0", None]])
    lines = table.splitlines()
    assert lines[0] == "| name      | ms   | AP    |"
    assert lines[1] == "|-----------|-----:|------:|"
    assert lines[2] == "| long name | 12.5 | 60.65 |"
    assert lines[3] == "| b         |  3.0 |     - |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(InputError, match="3 cells"):
        format_table(["a", "b", "c"], [[1, 2]])


def test_timing_table_medians_in_ms_and_ratios_to_the_baseline():
    table = timing_table({"fast": [0.010, 0.030, 0.020], "slow": [0.040, 0.050, 0.060]}, baseline="fast",
                         extra={"detections": {"fast": 3}})
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    assert rows[0] == ["candidate", "median ms", "min ms", "max ms", "x fast", "detections"]
    assert rows[2] == ["fast", "20.0", "10.0", "30.0", "1.00", "3"]
    assert rows[3] == ["slow", "50.0", "40.0", "60.0", "2.50", "-"]
    with pytest.raises(InputError, match="baseline"):
        timing_table({"a": [1.0]}, baseline="b")


def test_header_names_the_cpu_threads_input_and_rounds():
    text = header(threads=3, runs=5, warmup=1, input_shape=(1, 3, 64, 96), notes=["a note"])
    lines = text.splitlines()
    assert lines[0].startswith(f"machine: {cpu_description()}, ")
    assert lines[1].startswith("software: Python ")
    assert lines[2] == "threads: 3  input: 1x3x64x96  runs: 5 interleaved rounds after 1 warm-up (median, min, max)"
    assert lines[3] == "a note"


def test_runtime_targets_one_row_per_runtime_and_precision():
    targets = runtime_targets(config="c.yaml", opts=["MODEL.WEIGHTS", "w.pth"], onnx="m.onnx", int8="m8.onnx",
                              openvino=["fp32", "bf16"], threads=2)
    assert [t.label for t in targets] == [
        "PyTorch eager fp32", "ONNX Runtime fp32", "OpenVINO fp32", "OpenVINO bf16",
        "ONNX Runtime int8", "OpenVINO int8", "OpenVINO int8, rest bf16",
    ]
    assert [t.float32 for t in targets] == [True, True, True, False, False, False, False]
    assert targets[0].options == {"opts": ["MODEL.WEIGHTS", "w.pth"], "threads": 2}
    assert targets[3].options == {"precision": "bf16", "threads": 2, "cache_dir": ""}
    assert all(t.options["threads"] == 2 for t in targets)
    assert [t.label for t in runtime_targets(onnx="m.onnx", openvino=[])] == ["ONNX Runtime fp32", "OpenVINO fp32"]
    assert [t.runtime for t in runtime_targets(onnx="m.onnx")] == ["onnxruntime"]
    many = runtime_targets(onnx="m.onnx", openvino=["fp32"], requests=2)
    assert [t.label for t in many] == ["ONNX Runtime fp32", "OpenVINO fp32", "OpenVINO fp32, 2 requests"]
    assert many[2].options["requests"] == 2 and "requests" not in many[1].options


def test_benchmark_command_prints_rates_and_the_share_of_the_floor(capsys):
    """The whole command on the sample config with random weights at a small size: the header
    names the work and the peaks, every row has its images/s and its % of the floor."""
    from golden import ROOT

    assert root_script("tools/benchmark.py").main([
        "--config-file", str(ROOT / "configs" / "sample" / "shapes_lite_V_19_slim_dw.yaml"), "--size", "128x128",
        "--runs", "1", "--warmup", "0", "--stream", "2", "--peak-size", "128", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "GMAC of convolutions and linear layers at 128x128" in out and "fp32 peak: " in out
    row = next(line for line in out.splitlines() if line.startswith("| PyTorch eager fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[7]) > 0 and cells[8].endswith("% (fp32)"), row


@pytest.mark.parametrize("argv, message", [
    ([], "at least one of"),
    (["--onnx", "m.onnx", "--images", "dir"], "go together"),
    (["--onnx", "m.onnx", "MODEL.DEVICE", "cpu"], "overrides are for the PyTorch row"),
])
def test_benchmark_command_refuses_incomplete_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        root_script("tools/benchmark.py").main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_shapes_command_writes_the_package_generator_dataset(tmp_path):
    from centermask2.data.shapes import make_split

    assert root_script("tools/make_shapes_dataset.py").main(["--output-dir", str(tmp_path / "cli"), "--train", "0", "--val", "1",
                                               "--no-progress"]) == 0
    make_split(tmp_path / "lib", "val", 1, progress=False)
    a, b = (json.loads((tmp_path / d / "val" / "annotations.json").read_text()) for d in ("cli", "lib"))
    assert a == b and len(a["images"]) == 1
    assert not (tmp_path / "cli" / "train").exists()
