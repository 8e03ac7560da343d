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
from dataclasses import fields
from pathlib import Path

import pytest

from centermask2.export import ExportSettings
from golden import (
    LITE,
    ScriptExports,
    export_case,
    script_model,
)

SMOKE = "test_configs_smoke.py"


#: the fixtures whose files are made in the background (:class:`~golden.ScriptExports`)
BACKGROUND_FIXTURES = {"script_export", "lite_dynamic"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need a file made in the background run after the others, so that it is made by
    the time they ask for it: first the modules none of whose tests needs one, then those with a
    test that needs a script export (whole modules, so that module fixtures are set up once),
    and the smoke of every config last. The background work starts once the tests are collected
    (see :func:`pytest_collection_finish`)."""
    waiting = {item.path for item in items if BACKGROUND_FIXTURES & set(getattr(item, "fixturenames", ()))}
    # stable: within each group the modules keep their order
    items.sort(key=lambda item: (item.path.name == SMOKE, item.path in waiting))


def _smoke_module(items: list[pytest.Item]):
    return next((item.module for item in items if item.path.name == SMOKE), None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the exports the selected tests will need in the background: the script exports
    (:class:`~golden.ScriptExports`) and the smoke's (one worker each)."""
    if session.config.option.collectonly:
        return
    SCRIPT_EXPORTS.prefetch(_script_exports_wanted(session.items))
    module = _smoke_module(session.items)
    if module is not None:
        module.EXPORTS.start(module.configs_wanted(session.items))


def pytest_sessionfinish(session: pytest.Session) -> None:
    SCRIPT_EXPORTS.close()
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


#: the session's convert_model_into_onnx.py exports (queued at collection, closed at the end)
SCRIPT_EXPORTS = ScriptExports()


def _script_exports_wanted(items: list[pytest.Item]) -> list[tuple[str, str]]:
    """The script exports the selected tests ask for, in the order the first of them runs: the
    Lite dynamic one (``lite_dynamic``), and the V-39 ones of the tests that name a V-39 case."""
    wanted: list[tuple[str, str]] = []
    for item in items:
        names = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = params.get("case", params.get("name"))
        keys = []
        if "lite_dynamic" in names or ("script_export" in names and case == LITE):
            keys.append((LITE, "dynamic"))
        if "script_export" in names and case in ("V_39", "V_39_dcn"):
            keys.append((case, params.get("form") or "dynamic"))
        wanted += [k for k in keys if k not in wanted]
    return wanted


@pytest.fixture(scope="session")
def script_export():
    """``script_export(case, form) -> ScriptExport``: ``convert_model_into_onnx.py --verify`` (on
    the case's first image) run once per session on the case's golden checkpoint, ``form`` one of
    :data:`~golden.SCRIPT_FORMS`, with our modules' warnings shown; the file is shared (do not
    change it). The script's own test asserts on its output and exit code; the others run the
    file. Made in the background where the session's collection queued it (:class:`~golden.ScriptExports`)."""
    return SCRIPT_EXPORTS.get


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
