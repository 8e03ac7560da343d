"""Files every stage reads and writes: bounded readers, atomic writes, output folders.

Reading: every file the toolkit reads is first checked by :func:`check_input_file` (it exists, is a
regular file, not a named pipe or a device that would block or never end, and is not larger than
its kind ever is). JSON files users receive from elsewhere (annotation files, bin folders,
manifests, progress files) are read through :func:`read_json` / :func:`parse_json_text`: standard
JSON only (no ``NaN`` / ``Infinity``), at most :data:`MAX_NESTING` levels deep, errors that name the
file and what was expected instead of a bare ``JSONDecodeError`` or ``RecursionError``. The
``check_*`` helpers validate the values of such files with one kind of message: the file, the key,
what it must be and what it is.

Writing: :func:`ensure_writable_dir` is the one place an output folder is prepared: created,
refused when it holds a symbolic link (writing through it would write outside the folder), checked
writable, and locked for this process so that a second run into the same folder stops at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError, MissingFileError, OutputError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_NESTING",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_input_file",
    "open_input_file",
    "read_json",
    "parse_json_text",
    "json_depth_exceeds",
    "check_int",
    "check_choice",
    "check_keys",
    "plain_name",
    "file_digest",
    "text_digest",
    "path_inside",
    "ensure_writable_dir",
    "output_session",
    "release_output_dirs",
    "remove_stale_temp_files",
    "check_output_file",
    "check_free_space",
]

#: the most bytes :func:`read_json` reads by default: more than any COCO-style annotation or results
#: file (COCO's largest, instances_train2017.json, is 448 MB); the toolkit's own files have lower limits
MAX_JSON_BYTES = 2 << 30
#: the deepest nesting of arrays / objects (and YAML sequences / mappings) a file may have; COCO
#: files need 5 levels, configs 4
MAX_NESTING = 100


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


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_stat(p: Path, st: os.stat_result, what: str, tail: str, max_bytes: int | None) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise MissingFileError(f"{what} not found: {str(p)!r} is a folder, not a file{tail}")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for is_kind, name in _FILE_KINDS if is_kind(st.st_mode)), "not a plain file")
        raise InputError(
            f"{what} {str(p)!r} is not a regular file ({kind}): reading it could wait forever or never end; "
            f"give a regular file{tail}"
        )
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(
            f"{what} {str(p)!r} is larger than a {what} can be ({st.st_size:,} bytes, at most {max_bytes:,}): "
            f"it is not one, or it is damaged{tail}"
        )


def check_input_file(
    path: str | os.PathLike, what: str = "file", *, hint: str = "", max_bytes: int | None = None
) -> Path:
    """``path`` if it is a regular file of at most ``max_bytes`` bytes, else an error naming it.

    Named pipes, devices and sockets are refused: reading one waits forever (a pipe nobody writes
    to) or never ends (``/dev/zero``). Call it before handing a path to a library that opens it.

    Raises:
        MissingFileError: no such file, or a folder.
        InputError: not a regular file, larger than ``max_bytes``, or cannot be examined.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(f"{what} not found: {str(p)!r}{tail}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}{tail}") from None
    _check_stat(p, st, what, tail, max_bytes)
    return p


def open_input_file(
    path: str | os.PathLike,
    what: str = "file",
    *,
    hint: str = "",
    max_bytes: int | None = None,
    follow_links: bool = True,
) -> IO[bytes]:
    """Open ``path`` for reading in binary mode after the checks of :func:`check_input_file`, made on
    the opened file itself (a file swapped for a pipe meanwhile is refused, never waited on).

    ``follow_links=False``: a symbolic link is refused (files a run wrote itself, read back on resume).
    """
    p = check_input_file(path, what, hint=hint, max_bytes=max_bytes)
    tail = f"; {hint}" if hint else ""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        if p.is_symlink():
            raise InputError(f"{what} {str(p)!r} is a symbolic link; the toolkit reads back only files it wrote{tail}")
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise InputError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}{tail}") from None
    try:
        _check_stat(p, os.fstat(fd), what, tail, max_bytes)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _NotStandardJson(ValueError):
    """A JSON text uses what JSON does not have (``NaN``, ``Infinity``)."""


def _refuse_constant(name: str) -> Any:
    raise _NotStandardJson(f"{name} is not a JSON number (JSON has no NaN or infinities)")


def json_depth_exceeds(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether ``value`` (parsed JSON) nests lists / dicts more than ``limit`` levels deep (iterative,
    level by level, so that it never recurses itself)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        deeper = []
        for item in level:
            children = item.values() if type(item) is dict else item if type(item) is list else ()
            kinds = set(map(type, children))
            if list in kinds or dict in kinds:
                deeper.extend(c for c in children if type(c) is list or type(c) is dict)
        level = deeper
    return False


def parse_json_text(text: str | bytes, source: str, what: str = "JSON file", hint: str = "") -> Any:
    """Parse JSON text from an untrusted ``source`` (a quoted file name, a model's metadata key).

    Standard JSON only: ``NaN`` / ``Infinity`` are refused, and so is nesting deeper than
    :data:`MAX_NESTING` (which would otherwise end in a ``RecursionError``, here or in later code).

    Raises:
        InputError: not UTF-8, not JSON, not standard JSON, or nested too deeply; the message names
            ``source`` and ``what``.
    """
    tail = f"; {hint}" if hint else ""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        data = json.loads(text, parse_constant=_refuse_constant)
    except _NotStandardJson as exc:
        raise InputError(f"{source} is not a valid {what}: {exc}{tail}") from None
    except RecursionError:
        data = None
        too_deep = True
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int() of a 5000-digit number
        raise InputError(f"{source} is not a valid {what} (not UTF-8 JSON: {exc}){tail}") from None
    else:
        too_deep = json_depth_exceeds(data)
    if too_deep:
        raise InputError(
            f"{source} is not a valid {what}: its arrays / objects are nested more than {MAX_NESTING} levels deep{tail}"
        )
    return data


def read_json(
    path: str | os.PathLike,
    what: str = "JSON file",
    expect: type | tuple[type, ...] | None = None,
    hint: str = "",
    *,
    max_bytes: int = MAX_JSON_BYTES,
    follow_links: bool = True,
) -> Any:
    """Parse the JSON file ``path``, naming it in every error (see :func:`parse_json_text`).

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"COCO annotation file"``).
        expect: the type(s) the top-level value must have (e.g. ``dict``), or None.
        hint: appended to the messages: where such a file comes from or how to fix it.
        max_bytes: refuse a larger file (before reading it).
        follow_links: False to refuse a symbolic link (files a run reads back from its own folder).

    Raises:
        MissingFileError: no such file (or a folder).
        InputError: not a regular file, too large, unreadable, not UTF-8 standard JSON, nested
            too deeply, or the wrong top-level type.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    with open_input_file(p, what, hint=hint, max_bytes=max_bytes, follow_links=follow_links) as f:
        try:
            raw = f.read()
        except OSError as exc:
            raise InputError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}{tail}") from None
    data = parse_json_text(raw, repr(str(p)), what, hint)
    if expect is not None and not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise InputError(f"{str(p)!r} is not a valid {what}: expected a JSON {names}, found {type(data).__name__}{tail}")
    return data


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(value: Any, name: str, where: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool, not a float such as ``1.5`` or ``Infinity``) in
    [``minimum``, ``maximum``], else ``InputError("<where>: <name> must be ..., got <value>")``."""
    if type(value) is not int:
        raise InputError(f"{where}: {name} must be an integer, got {_shown(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            expected = f"from {minimum:,} to {maximum:,}"
        else:
            expected = f">= {minimum:,}" if minimum is not None else f"<= {maximum:,}"
        raise InputError(f"{where}: {name} must be {expected}, got {_shown(value)}")
    return value


def check_choice(value: Any, name: str, where: str, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices`` (compared with their types: ``"0"`` is not ``0``), else an
    ``InputError`` naming ``where``, ``name``, the choices and the value."""
    if not any(type(value) is type(c) and value == c for c in choices):
        listed = " or ".join(map(repr, choices)) if len(choices) == 2 else "one of " + ", ".join(map(repr, choices))
        raise InputError(f"{where}: {name} must be {listed}, got {_shown(value)}")
    return value


def check_keys(data: Any, where: str, required: set[str], optional: set[str] = frozenset(), what: str = "") -> dict:
    """``data`` if it is a JSON object with every key of ``required`` and no key outside
    ``required | optional``; the error names ``where`` (and ``what``, e.g. ``"image 3"``)."""
    label = f"{what} " if what else ""
    if not isinstance(data, dict):
        raise InputError(f"{where}: {label}must be a JSON object, got {_shown(data)}")
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - required - set(optional))
    if missing or unknown:
        parts = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + \
            ([f"has unknown key(s) {', '.join(map(repr, unknown[:10]))}"] if unknown else [])
        raise InputError(f"{where}: {label}{' and '.join(parts)}")
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

#: output folders this process holds the lock of: (device, inode) -> (open descriptor, path)
_LOCKS: dict[tuple[int, int], tuple[int, str]] = {}
#: the locks taken inside each open :func:`output_session`, innermost last
_SESSIONS: list[set[tuple[int, int]]] = []


def _refuse_links(path: Path, option: str) -> None:
    """Refuse an output folder holding a symbolic link: a write through it (``image_sizes`` linked to
    another folder) would land outside the folder, and a resumed run would read what it points to."""
    with os.scandir(path) as entries:
        links = [e for e in entries if e.is_symlink()]
    if links:
        link = links[0]
        target = os.readlink(link.path)
        raise OutputError(
            f"output folder {str(path)!r} holds a symbolic link {link.name!r} (to {target!r}); the toolkit writes "
            f"only inside the folder it is given, and would write or read through it: remove the link, or choose "
            f"another {option}"
        )


def _lock(path: Path, option: str) -> None:
    """Hold ``path``'s lock for this process (``flock`` on the folder itself: released when the
    process ends, however it ends); another process holding it means another run uses the folder."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    if key in _LOCKS:
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(
            f"another run is using the output folder {str(path)!r} (it holds the folder's lock): two runs in one "
            f"folder would delete each other's files. Wait for it to finish, or choose another {option}"
        ) from None
    except OSError:  # a file system without locks (some network mounts): go on without one
        os.close(fd)
        return
    _LOCKS[key] = (fd, str(path))
    if _SESSIONS:
        _SESSIONS[-1].add(key)


def ensure_writable_dir(folder: str | os.PathLike, option: str = "--output", *, exclusive: bool = True) -> Path:
    """Prepare the output folder ``folder``: create it (and parents) if needed, refuse it if it holds
    a symbolic link, check that a file can be written in it, and lock it for this process.

    The lock is held until the :func:`output_session` it was taken in ends (every script runs in one),
    or the process ends; a second process preparing the same folder meanwhile gets an error. Calling
    it again for a folder this process holds is fine. ``exclusive=False``: only create and check it
    (the folder of one output file, which other files and runs may share: no link check, no lock).

    Raises:
        OutputError: it cannot be created or written (or is a file), it holds a symbolic link, or
            another run holds it; the message names it and ``option``.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if exclusive:
            _refuse_links(path, option)
            _lock(path, option)
        fd, probe = tempfile.mkstemp(prefix=f".{_PROBE}.", suffix=".tmp", dir=path)
        os.close(fd)
        os.remove(probe)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(
            f"output folder {str(path)!r} is not writable ({exc.strerror or exc}); choose another {option} "
            "or fix its permissions"
        ) from exc
    return path


def release_output_dirs(keys: set[tuple[int, int]] | None = None) -> None:
    """Release the locks this process holds on output folders (``keys``: only those)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: there are none
        return
    for key in list(_LOCKS if keys is None else keys):
        held = _LOCKS.pop(key, None)
        if held is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])


@contextlib.contextmanager
def output_session() -> Iterator[None]:
    """The output folders prepared (:func:`ensure_writable_dir`) inside this block are released at its
    end; those held before it stay held. Every script's ``main`` and every stage function runs in one."""
    _SESSIONS.append(set())
    try:
        yield
    finally:
        release_output_dirs(_SESSIONS.pop())


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
        OutputError: ``path`` is a folder, or another file than a regular one (a device such as
            ``/dev/null``, a named pipe, a socket: the atomic write would replace it with a regular
            file), or its folder cannot be created or written; the message names it and ``option``.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{option} {str(p)!r} is a folder; give a file path, e.g. {str(p / 'model.onnx')!r}")
    try:
        st = p.lstat()
    except OSError:  # not there yet (or not examinable: the write will say)
        st = None
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        kind = next((name for is_kind, name in _FILE_KINDS if is_kind(st.st_mode)), "not a plain file")
        raise OutputError(
            f"{option} {str(p)!r} is not a regular file ({kind}): the toolkit writes the file next to it and moves "
            "it into place, which would replace it; give the path of a regular file"
        )
    ensure_writable_dir(p.parent if str(p.parent) else ".", option, exclusive=False)  # a folder others may share
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
