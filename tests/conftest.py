"""Shared fixtures. The golden cases' data and plain helpers are in :mod:`golden`.

ONNX exports of the golden cases are made once per test session, on first use, and shared
(read-only) by every module that needs the same model: ask for ``exported_model`` and call it
with the case and the :class:`~centermask2.export.ExportSettings` wanted (plus ``simplify``), or
for ``script_export`` where the export is made by ``convert_model_into_onnx.py`` itself (the V-39
and V-39-DCN exports: one export each, checked by the script test and run by the others).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from centermask2.export import ExportSettings
from golden import (
    CASES,
    CONFIGS,
    LITE,
    ROOT,
    SCRIPT_FORMS,
    SHOW_OUR_WARNINGS,
    ScriptExport,
    case_info,
    export_case,
    script_model,
    write_checkpoint,
)

SMOKE = "test_configs_smoke.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The smoke of every config runs last: its exports start in the background once the tests are
    collected (see :func:`pytest_collection_finish`) and have the whole session to get made."""
    items.sort(key=lambda item: item.path.name == SMOKE)  # stable: the others keep their order


def _smoke_module(items: list[pytest.Item]):
    return next((item.module for item in items if item.path.name == SMOKE), None)


def pytest_collection_finish(session: pytest.Session) -> None:
    module = _smoke_module(session.items)
    if module is not None and not session.config.option.collectonly:
        module.EXPORTS.start(module.configs_wanted(session.items))


def pytest_sessionfinish(session: pytest.Session) -> None:
    module = _smoke_module(session.items)
    if module is not None:
        module.EXPORTS.close()


def _export_key(case: str, settings: dict) -> tuple:
    """One key per distinct export: the settings left out are the defaults (``opset`` None: the
    model's own default)."""
    values = {f.name: f.default for f in fields(ExportSettings)}
    values.update(opset=None, simplify=False)
    unknown = set(settings) - set(values)
    if unknown:
        raise TypeError(f"not an export setting: {sorted(unknown)}")
    values.update(settings)
    values["input_size"] = tuple(values["input_size"])
    return (case, *sorted(values.items()))


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory):
    """``exported_model(case, **settings) -> Path``: the case's model with its golden weights exported
    with these settings, once per test session (the file is shared: do not change it)."""
    folder = tmp_path_factory.mktemp("centermask2 exports")  # a path with a space
    made: dict[tuple, Path] = {}

    def get(case: str, **settings) -> Path:
        key = _export_key(case, settings)
        if key not in made:
            made[key] = export_case(case, folder / f"{case}_{len(made)}.onnx", **settings)
        return made[key]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def script_export(tmp_path_factory):
    """``script_export(case, form) -> ScriptExport``: ``convert_model_into_onnx.py --verify`` (on
    the case's first image) run once per session on the case's golden checkpoint, ``form`` one of
    :data:`SCRIPT_FORMS`, with our modules' warnings shown; the file is shared (do not change it).
    The script's own test asserts on its output and exit code; the others run the file."""
    folder = tmp_path_factory.mktemp("script exports")
    made: dict[tuple[str, str], ScriptExport] = {}

    def get(case: str, form: str) -> ScriptExport:
        if (case, form) not in made:
            ckpt = write_checkpoint(case, folder / f"{case}.pth")
            path = folder / f"{case}_{form}.onnx"
            cmd = [sys.executable, "-c", SHOW_OUR_WARNINGS, str(ROOT / "convert_model_into_onnx.py"),
                   "--config-file", str(CONFIGS / case_info(case)["config"]), "--output", str(path),
                   *SCRIPT_FORMS[form], "--verify", str(CASES[case] / "images" / "000000000001.png"),
                   "MODEL.WEIGHTS", str(ckpt)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            made[case, form] = ScriptExport(path, proc.stdout + proc.stderr, proc.returncode)
        return made[case, form]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def lite_dynamic(script_export) -> Path:
    """The Lite case, dynamic (exported with a 640x960 sample): the file convert_model_into_onnx.py
    --dynamic writes (its own test, test_export_onnx::test_export_prints_our_lines_only, checks
    what the script printed)."""
    return script_model(script_export(LITE, "dynamic"))


@pytest.fixture(scope="session")
def lite_static(exported_model) -> Path:
    """The Lite case, static 1344x1344 uint8, batch 1 (padding ignored: upstream's default results)."""
    return exported_model(LITE, input_size=(1344, 1344))


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """An existing folder in which no file or folder can be created, whoever runs the tests: mode
    0o555, which the kernel enforces for every user but root; where this user can write there
    anyway (root, as CI runs), creating anything in it fails as the kernel fails it for the
    others (``PermissionError``, EACCES), so the code's own handling of that error runs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real_open, real_mkdir = os.open, os.mkdir

        def inside(path) -> bool:
            return os.path.dirname(os.path.abspath(os.fspath(path))) == str(folder)

        def refusing_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and inside(path) and not os.path.exists(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        def refusing_mkdir(path, *args, **kwargs):
            if inside(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
        monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    yield folder
    folder.chmod(0o700)
