"""tools/demo.py, the short tour: it succeeds on the bundled sample model, and what it prints is a
summary a person reads in one screen, every step's own output in the log file its line names."""

import json
import re
from pathlib import Path

import pytest

from golden import ScriptRun

#: a screen
MAX_LINES = 40


def _demo(run: ScriptRun) -> tuple[list[str], dict[str, Path]]:
    """The demo's run as users run it (``tools/demo.py``, made in the background: the fixtures
    ``demo_quick`` and ``demo_full``); returns its console lines and the step logs they name."""
    out = run.path
    lines = run.output.splitlines()
    assert run.returncode == 0, run.output
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    assert lines[-1].startswith("Done in ") and lines[-1].endswith("Every path within 0.1 AP of the shipped figures.")
    logs = {}
    for line in lines:
        found = re.fullmatch(r"(.+?)\s+\d+\.\d s\s+(logs/\d\d_\w+\.log)", line)
        if found:
            logs[found.group(1)] = out / found.group(2)
    assert logs and all(path.is_file() and path.stat().st_size > 0 for path in logs.values()), logs
    assert sorted(logs.values()) == sorted((out / "logs").iterdir())  # every log is named on the console
    return lines, logs


def test_quick_demo_prints_one_screen(demo_quick):
    out = demo_quick.path
    lines, logs = _demo(demo_quick)
    assert [name.split(" (")[0] for name in logs] == ["held-out images", "PyTorch", "pictures"]
    # the stages' own lines are in the logs, not on the console
    assert any("Drew 120 image(s)" in line for line in logs["pictures (visualizer.py)"].read_text().splitlines())
    assert not any("Drew 120 image(s)" in line for line in lines)
    assert json.loads((out / "torch" / "metrics.json").read_text())["segm"]["AP"] > 0


@pytest.mark.slow
def test_full_demo_prints_one_screen(demo_full):
    """The 120 per-image comparison lines go to the comparison step's log; their total is on the console."""
    out = demo_full.path
    lines, logs = _demo(demo_full)
    compare = next(path for name, path in logs.items() if "--compare" in name)
    per_image = [line for line in compare.read_text().splitlines() if re.match(r"\d+\.\w+: ", line)]
    assert len(per_image) == 120
    assert sum("Comparison over all images" in line for line in lines) == 1
    assert (out / "offline" / "metrics.json").is_file() and any((out / "pictures_torch_vs_onnx").iterdir())
