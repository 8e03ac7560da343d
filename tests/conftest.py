"""Shared fixtures. The golden cases' data and plain helpers are in :mod:`golden`.

ONNX exports of the golden cases are made once per test session, on first use, and shared
(read-only) by every module that needs the same model: ask for ``exported_model`` and call it
with the case and the :class:`~centermask2.export.ExportSettings` wanted (plus ``simplify``).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from centermask2.export import ExportSettings
from golden import LITE, export_case


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
def lite_dynamic(exported_model) -> Path:
    """The Lite case, dynamic (exported with a 640x960 sample)."""
    return exported_model(LITE, dynamic=True, input_size=(640, 960))


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
