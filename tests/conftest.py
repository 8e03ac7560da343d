"""Shared fixtures. The golden cases' data and plain helpers are in :mod:`golden`.

ONNX exports of the golden cases are made once per test session, on first use, and shared
(read-only) by every module that needs the same model: ask for ``exported_model`` and call it
with the case and the :class:`~centermask2.export.ExportSettings` wanted (plus ``simplify``), or
for ``script_export`` where the export is made by ``convert_model_into_onnx.py`` itself (the
V-39, V-39-DCN, panoptic and Lite dynamic exports: one export each, checked by the script test
and run by the others). Those, and the demo's runs (``demo_full``, ``demo_quick``), are made in
the background from the end of the collection (:class:`~golden.BackgroundRuns`).
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
    PANOPTIC_CASE,
    BackgroundRuns,
    ScriptRun,
    demo_run,
    export_case,
    export_run,
    script_model,
)

SMOKE = "test_configs_smoke.py"


#: the fixtures whose files are made in the background (:class:`~golden.BackgroundRuns`) and the
#: runs each needs; ``script_export`` needs the ones its test's parameters name (``case`` or ``name``,
#: and ``form``: :func:`_runs_wanted`)
BACKGROUND_FIXTURES = {
    "lite_dynamic": [export_run(LITE, "dynamic")],
    "panoptic_dynamic": [export_run(PANOPTIC_CASE, "dynamic")],
    "panoptic_static": [export_run(PANOPTIC_CASE, "static-uint8")],
    "demo_quick": [demo_run("quick")],
    "demo_full": [demo_run("full")],
    "script_export": [],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need a file made in the background run after the others, so that it is made by
    the time they ask for it: first the modules none of whose tests needs one, then those with a
    test that needs one (whole modules, so that module fixtures are set up once),
    and the smoke of every config last. The background work starts once the tests are collected
    (see :func:`pytest_collection_finish`)."""
    waiting = {item.path for item in items if BACKGROUND_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))}
    # stable: within each group the modules keep their order
    items.sort(key=lambda item: (item.path.name == SMOKE, item.path in waiting))


def _smoke_module(items: list[pytest.Item]):
    return next((item.module for item in items if item.path.name == SMOKE), None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start what the selected tests will need in the background: the script runs
    (:class:`~golden.BackgroundRuns`) and the smoke's exports (one worker each)."""
    if session.config.option.collectonly:
        return
    BACKGROUND.prefetch(_runs_wanted(session.items))
    module = _smoke_module(session.items)
    if module is not None:
        module.EXPORTS.start(module.configs_wanted(session.items))


def pytest_sessionfinish(session: pytest.Session) -> None:
    BACKGROUND.close()
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


#: the session's background script runs (queued at collection, closed at the end)
BACKGROUND = BackgroundRuns()


def _runs_wanted(items: list[pytest.Item]) -> list[tuple[str, ...]]:
    """The background runs the selected tests ask for (:data:`BACKGROUND_FIXTURES`), in the order
    the first of them runs."""
    wanted: list[tuple[str, ...]] = []
    for item in items:
        names = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        keys = [key for name in names for key in BACKGROUND_FIXTURES.get(name, [])]
        # a test parametrized by case (or name) and form; no form: the dynamic one; form None: none
        case, form = params.get("case", params.get("name")), params.get("form", "dynamic")
        if "script_export" in names and case is not None and form is not None:
            keys.append(export_run(case, form))
        wanted += [k for k in keys if k not in wanted]
    return wanted


@pytest.fixture(scope="session")
def script_export():
    """``script_export(case, form) -> ScriptRun``: ``convert_model_into_onnx.py --verify`` (on
    the case's first image) run once per session on the case's golden checkpoint, ``form`` one of
    :data:`~golden.SCRIPT_FORMS`, with our modules' warnings shown; the file is shared (do not
    change it). The script's own test asserts on its output and exit code; the others run the
    file. Made in the background where the session's collection queued it (:func:`_runs_wanted`)."""
    return lambda case, form: BACKGROUND.get(export_run(case, form))


@pytest.fixture(scope="session")
def demo_full() -> ScriptRun:
    """``tools/demo.py`` run once per session as users run it; ``path`` is its output folder
    (shared: do not change it)."""
    return BACKGROUND.get(demo_run("full"))


@pytest.fixture(scope="session")
def demo_quick() -> ScriptRun:
    """``tools/demo.py --quick``, once per session (as :func:`demo_full`)."""
    return BACKGROUND.get(demo_run("quick"))


@pytest.fixture(scope="session")
def lite_dynamic(script_export) -> Path:
    """The Lite case, dynamic (exported with a 640x960 sample): the file convert_model_into_onnx.py
    --dynamic writes (its own test, test_export_onnx::test_export_prints_our_lines_only, checks
    what the script printed)."""
    return script_model(script_export(LITE, "dynamic"))


@pytest.fixture(scope="session")
def panoptic_dynamic(script_export) -> Path:
    """The panoptic V-39 case, dynamic, as convert_model_into_onnx.py --dynamic writes it."""
    return script_model(script_export(PANOPTIC_CASE, "dynamic"))


@pytest.fixture(scope="session")
def panoptic_static(script_export) -> Path:
    """The panoptic V-39 case, static 1344x1344 uint8 (padding ignored), from convert_model_into_onnx.py."""
    return script_model(script_export(PANOPTIC_CASE, "static-uint8"))


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
