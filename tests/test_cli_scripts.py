"""Every script answers --help, and the options the README documents are the ones it has."""

import importlib
import re
import subprocess
import sys

import pytest

from golden import ROOT

#: script -> the module in centermask2/cli that holds its code
SCRIPTS = {
    "tester.py": "tester",
    "convert_model_into_onnx.py": "export_onnx",
    "preprocess_inputs_to_bin.py": "preprocess",
    "postprocess_bin_outputs.py": "postprocess",
    "visualizer.py": "visualizer",
    "tools/train_net.py": "train",
    "tools/quantize.py": "quantize",
}


def _readme_options() -> dict[str, set[str]]:
    options: dict[str, set[str]] = {}
    current = None
    for line in (ROOT / "README.md").read_text().splitlines():
        heading = re.match(r"^### `([\w./]+\.py)`", line)
        if heading:
            current = heading.group(1)
            options[current] = set()
        elif line.startswith("## "):
            current = None
        elif current and line.startswith("| `--"):
            options[current].add(re.match(r"^\| `(--[\w-]+)", line).group(1))
    return options


def _help(script: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_matches_readme(script):
    documented = _readme_options()
    assert script in documented, f"README has no options table for {script}"
    assert _help(script).startswith("usage:")
    module = importlib.import_module(f"centermask2.cli.{SCRIPTS[script]}")
    offered = {o for a in module.build_parser()._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    assert documented[script] <= offered, f"README documents options {script} lacks"
    assert offered - documented[script] <= {"--output"}, f"options missing from the README table of {script}"


def test_readme_commands_name_real_scripts():
    text = (ROOT / "README.md").read_text()
    for script in re.findall(r"python ([\w/]+\.py)", text):
        assert (ROOT / script).is_file(), script
