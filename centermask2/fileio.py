"""Files every stage reads and writes: atomic writes, named JSON reading, writable folders.

Files users receive from elsewhere (annotation JSON, bin folders, manifests) are read through
:func:`read_json`, whose errors name the file and what was expected instead of a bare
``JSONDecodeError``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError, MissingFileError, OutputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "read_json",
    "plain_name",
    "file_digest",
    "text_digest",
    "path_inside",
    "ensure_writable_dir",
    "remove_stale_temp_files",
    "check_output_file",
    "check_free_space",
]


def atomic_write_bytes(data: bytes | memoryview, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    A reader (or a resumed run) never sees a half-written file: either the old file (or none)
    or the complete new one. Creates missing parent folders. A full disk (or quota) raises the
    ``OSError`` with ``path`` as its ``filename``, so that the message names the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would (engines may run as another user)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and not exc.filename:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path)) from exc
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it


def atomic_write_json(obj: Any, path: str | os.PathLike, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(json.dumps(obj, **dump_kwargs).encode("utf-8"), path)


def read_json(
    path: str | os.PathLike, what: str = "JSON file", expect: type | tuple[type, ...] | None = None, hint: str = ""
) -> Any:
    """Parse the JSON file ``path``, naming it in every error.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"COCO annotation file"``).
        expect: the type(s) the top-level value must have (e.g. ``dict``), or None.
        hint: appended to the messages: where such a file comes from or how to fix it.

    Raises:
        MissingFileError: no such file (or a folder).
        InputError: unreadable, not UTF-8 JSON, or the wrong top-level type.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if not p.is_file():
        raise MissingFileError(f"{what} not found: {str(p)!r}{tail}")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{str(p)!r} is not a valid {what} (not UTF-8 JSON: {exc}){tail}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}{tail}") from None
    if expect is not None and not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise InputError(f"{str(p)!r} is not a valid {what}: expected a JSON {names}, found {type(data).__name__}{tail}")
    return data


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's content (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_digest(text: str) -> str:
    """SHA-256 of a string (hex), for comparing settings without storing them."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plain_name(name: object, what: str = "name") -> str:
    """``name`` if it is a plain file name (no folder part), else an error naming it.

    Files received from elsewhere (``bin_info.json``, ``manifest.json``) name other files; a name
    like ``../x`` or ``/abs/x`` would make a stage read or write outside its folder.

    Raises:
        InputError: not a non-empty string, or it contains ``/``, ``\\``, NUL, or is ``.``/``..``.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise InputError(f"{what} {name!r} is not a plain file name (no folders, '..', or NUL); refusing to use it")
    return name


def path_inside(folder: str | os.PathLike, relative: object, what: str = "path") -> Path:
    """``folder / relative`` if it stays inside ``folder``, else an error naming it.

    Raises:
        InputError: ``relative`` is not a string, is absolute, contains NUL or climbs out of
            ``folder`` (``..``, also through symbolic links).
    """
    if not isinstance(relative, str) or not relative or "\0" in relative or os.path.isabs(relative):
        raise InputError(f"{what} {relative!r} must be a relative path inside {os.fspath(folder)!r}")
    base = Path(folder).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise InputError(f"{what} {relative!r} points outside {os.fspath(folder)!r}; refusing to use it")
    return Path(folder) / relative


_PROBE = "write_test"


def ensure_writable_dir(folder: str | os.PathLike, option: str = "--output") -> Path:
    """Create ``folder`` (and parents) if needed and check a file can be written in it.

    Raises:
        OutputError: it cannot be created or written (or is a file); the message names it and ``option``.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{_PROBE}.", suffix=".tmp", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise OutputError(
            f"output folder {str(path)!r} is not writable ({exc.strerror or exc}); choose another {option} "
            "or fix its permissions"
        ) from exc
    return path


def remove_stale_temp_files(folder: str | os.PathLike, is_ours: Callable[[str], bool]) -> int:
    """Delete temp files an interrupted run left in ``folder``.

    Those are the ``.<name>.<random>.tmp`` files of :func:`atomic_write_bytes` (for names
    ``is_ours`` accepts) and of the :func:`ensure_writable_dir` probe.

    Returns:
        how many files were removed.
    """
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp") and entry.is_file()):
                continue
            target = name[1 : -len(".tmp")].rsplit(".", 1)[0]  # ".<target>.<random>.tmp" -> "<target>"
            if target == _PROBE or is_ours(target):
                os.remove(entry.path)
                removed += 1
    return removed


def check_output_file(path: str | os.PathLike, option: str = "--output") -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is created).

    Raises:
        OutputError: ``path`` is a folder, or its folder cannot be created or written; the message
            names it and ``option``.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{option} {str(p)!r} is a folder; give a file path, e.g. {str(p / 'model.onnx')!r}")
    ensure_writable_dir(p.parent if str(p.parent) else ".", option)
    return p


def check_free_space(path: str | os.PathLike, needed: int, option: str = "--output") -> None:
    """Check, before a long computation, that the disk of ``path`` has about ``needed`` bytes free.

    Raises:
        OutputError: less free space than ``needed``; the message names the file, both sizes and the fix.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # cannot tell (e.g. the folder is not there yet): the write will say
        return
    if free < needed:
        raise OutputError(
            f"not enough free space for {str(p)!r}: it needs about {needed / 1e6:.1f} MB and its disk has "
            f"{free / 1e6:.1f} MB free; free some space or choose another {option}"
        )
