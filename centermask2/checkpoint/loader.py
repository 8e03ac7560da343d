"""Reading checkpoints safely and loading them into a model.

Two on-disk formats are understood, chosen by content rather than by file extension:

* detectron2 ``.pth`` files written by ``torch.save`` (``{"model": state_dict, ...}``, or a
  bare state dict), read with ``torch.load(..., weights_only=True)``;
* model-zoo ``.pkl`` files (a pickle of ``{"model": {name: numpy array}, "__author__": ...}``,
  or a plain ``{name: array}`` pickle), read with a restricted unpickler that builds only
  numpy arrays, dtypes, scalars and builtin containers.

Neither path ever runs code stored in the file; a file that needs more than that is
refused.  Names are returned as stored (a ``module.`` prefix from ``DataParallel`` is
removed); values become CPU tensors with their stored dtype.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MissingFileError
from ..fileio import check_input_file

__all__ = [
    "LoadReport",
    "UnsafeCheckpointError",
    "apply_state_dict",
    "check_weights_path",
    "checkpoint_size_limit",
    "read_checkpoint",
    "load_state_dict_file",
    "load_weights",
]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAX_LISTED = 10
_EXPECTED_FORMATS = (
    "expected a PyTorch checkpoint (.pth written by torch.save, e.g. {'model': state_dict}) "
    "or a detectron2 model-zoo .pkl (a pickle of {'model': {name: numpy array}})"
)
# Buffers the model fills from the config; detectron2 does not require them in checkpoints.
_OPTIONAL_MODEL_KEYS = frozenset({"pixel_mean", "pixel_std"})
# Errors that mean "the bytes are not a valid checkpoint" (as opposed to e.g. permission errors).
_CORRUPT_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
)


class UnsafeCheckpointError(InputError):
    """A checkpoint pickle references a Python object outside the numpy/container allowlist."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        source: The checkpoint path (or a description of the state dict).
        loaded: Names copied into the model.
        missing: Model names the checkpoint does not provide (kept at their current values).
        unexpected: Checkpoint names the model does not have (ignored).
        shape_mismatch: ``(name, checkpoint_shape, model_shape)`` for names present in both
            with different shapes (not loaded).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def is_complete(self) -> bool:
        """True when every model tensor was loaded from the checkpoint."""
        return not self.missing and not self.shape_mismatch


# ---------------------------------------------------------------------------------------
# Restricted unpickling of model-zoo .pkl files
# ---------------------------------------------------------------------------------------
def _numpy_attr(submodule: str, name: str) -> Callable[[], Any]:
    """Resolve ``numpy[._]core.<submodule>.<name>`` on numpy 1 or 2 without deprecation noise."""

    def resolve() -> Any:
        try:
            module = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:  # numpy < 1.26 has only numpy.core
            module = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(module, name)

    return resolve


def _build_allowlist() -> dict[tuple[str, str], Callable[[], Any]]:
    allowed: dict[tuple[str, str], Callable[[], Any]] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
        allowed[(f"{core}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
        allowed[(f"{core}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
    allowed[("numpy", "ndarray")] = lambda: np.ndarray
    allowed[("numpy", "dtype")] = lambda: np.dtype
    # Python 3 writes bytes as _codecs.encode(text, "latin1") in protocol-2 pickles.
    allowed[("_codecs", "encode")] = lambda: codecs.encode
    for builtins_module in ("builtins", "__builtin__"):
        for container in (dict, list, tuple, set, frozenset):
            allowed[(builtins_module, container.__name__)] = lambda c=container: c
    allowed[("collections", "OrderedDict")] = lambda: collections.OrderedDict
    return allowed


_PICKLE_ALLOWLIST = _build_allowlist()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/dtype/scalar constructors and containers."""

    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        resolver = _PICKLE_ALLOWLIST.get((module, name))
        if resolver is None:
            raise UnsafeCheckpointError(
                f"Checkpoint '{self._path}' tries to load {module}.{name}, which is not allowed: "
                "only numpy arrays and builtin containers may appear in a weights pickle. "
                "The file may be malicious; do not load it with plain pickle."
            )
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {pid!r} is not supported in a weights pickle")


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------
def check_weights_path(path: str | os.PathLike[str]) -> str:
    """Validate that ``path`` names an existing local file (not a URL) and return it as ``str``.

    Cheap: call it before any heavy work so a bad ``MODEL.WEIGHTS`` fails at once.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text:
        raise InputError(
            "No checkpoint given (empty path); pass a local file: MODEL.WEIGHTS /path/to/model.pth"
        )
    if _URL_RE.match(text):
        hint = ""
        if text.startswith("detectron2://"):
            remote = "https://dl.fbaipublicfiles.com/detectron2/" + text[len("detectron2://"):]
            hint = f" ({text} stands for {remote})"
        raise InputError(
            f"Checkpoint '{text}' is a URL; download it and pass a local file: "
            f"MODEL.WEIGHTS /path/to/model.pth{hint}"
        )
    if not os.path.exists(text):
        raise MissingFileError(f"Checkpoint file not found: '{text}'.")
    if os.path.isdir(text):
        raise InputError(f"Checkpoint path '{text}' is a directory; {_EXPECTED_FORMATS}.")
    check_input_file(text, "checkpoint")  # a named pipe or a device: reading it would wait or never end
    return text


def _corrupt(path: str, error: BaseException) -> InputError:
    return InputError(f"Checkpoint '{path}' is truncated or corrupt ({error}); download or write it again.")


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "weights only" not in message.lower():
            raise _corrupt(path, e) from e
        # Keep torch's line naming the offending global; drop its advice to disable the check.
        reasons = [line.strip() for line in message.splitlines() if "GLOBAL" in line or "Unsupported" in line]
        detail = f" ({reasons[0].rstrip('.')})" if reasons else ""
        raise InputError(
            f"Checkpoint '{path}' is not a plain checkpoint: it stores Python objects other than "
            f"tensors, numbers and containers, and loading those could run code from the file{detail}. "
            "Re-save only the weights, e.g. torch.save({'model': model.state_dict()}, path)."
        ) from e
    except _CORRUPT_ERRORS as e:
        raise _corrupt(path, e) from e


def _restricted_pickle_load(path: str, head: bytes) -> Any:
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except _CORRUPT_ERRORS as e:
        if head[:1] == b"\x80":  # starts like a binary pickle: damaged rather than foreign
            raise _corrupt(path, e) from e
        raise InputError(
            f"'{path}' is not a checkpoint: {_EXPECTED_FORMATS}; the file starts with {head[:16]!r}."
        ) from e


def _to_tensor(key: str, value: Any, path: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise InputError(
                f"Checkpoint '{path}': entry '{key}' is a numpy array of dtype {array.dtype}, not numbers."
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        # Pickled arrays may be read-only views of the file buffer; torch wants writable memory.
        return torch.from_numpy(np.require(array, requirements=["C", "W"]))
    raise InputError(
        f"Checkpoint '{path}': entry '{key}' is a {type(value).__name__}, not a tensor or numpy array; "
        f"{_EXPECTED_FORMATS}."
    )


def _select_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InputError(f"Checkpoint '{path}' holds a {type(obj).__name__}; {_EXPECTED_FORMATS}.")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            if "__author__" in obj:
                logger.info("Reading checkpoint '%s' (author: %s)", path, obj["__author__"])
            return obj[key]
    if isinstance(obj.get("blobs"), Mapping):
        raise InputError(
            f"Checkpoint '{path}' is a Caffe2/Detectron1 'blobs' file whose names need conversion; "
            "convert it to a detectron2 checkpoint first."
        )
    if obj and all(isinstance(v, (torch.Tensor, np.ndarray, np.generic)) for v in obj.values()):
        return obj  # bare state dict
    top = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
    raise InputError(
        f"Checkpoint '{path}' has no 'model' state dict (top-level keys: {top}); {_EXPECTED_FORMATS}."
    )


#: how many times the model's own tensor bytes a checkpoint's zip entries may declare (optimizer
#: state and EMA copies make real training checkpoints 2-4x the weights), plus a fixed slack
_ZIP_SIZE_FACTOR = 8
_ZIP_SIZE_SLACK = 64 << 20


def checkpoint_size_limit(model: torch.nn.Module) -> int:
    """The most bytes a checkpoint of ``model`` may have (on disk, or declared by its zip entries):
    :data:`_ZIP_SIZE_FACTOR` times its tensors' bytes plus a fixed slack. Every reader of a checkpoint
    for a model (tester, export, quantize, visualizer, training's starting weights and resume) uses it."""
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return _ZIP_SIZE_FACTOR * weight_bytes + _ZIP_SIZE_SLACK


def _check_zip_sizes(path: str, limit: int) -> None:
    """Refuse a ``torch.save`` zip whose entries declare more than ``limit`` bytes in all, before any
    entry is inflated (a few kilobytes of zip can declare terabytes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise _corrupt(path, e) from e
    if declared > limit:
        raise InputError(
            f"Checkpoint '{path}' declares {declared:,} bytes of content, far more than the model's weights need "
            f"(at most {limit:,}); refusing to inflate it. It is corrupt, or not a checkpoint of this model."
        )


def read_checkpoint(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Any:
    """What a checkpoint file holds (``torch.load(..., weights_only=True)``, or the restricted
    unpickler for model-zoo ``.pkl`` files), never running code from it.

    Args:
        path: a local regular file; the format is detected from the content.
        max_bytes: refuse a file larger than this, or a ``torch.save`` zip whose entries declare more
            (checked before anything is inflated); see :func:`checkpoint_size_limit`.

    Raises:
        InputError: empty path, URL, not a regular file, too large, truncated, corrupt, not a
            checkpoint, or holding Python objects beyond tensors/arrays and containers.
        MissingFileError: the file does not exist.
    """
    local = check_weights_path(path)
    size = os.path.getsize(local)
    if max_bytes is not None and size > max_bytes:
        raise InputError(
            f"Checkpoint '{local}' has {size:,} bytes, far more than the model's weights need (at most {max_bytes:,}); "
            "it is corrupt, or not a checkpoint of this model."
        )
    with open(local, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if not head:
        raise InputError(f"Checkpoint '{local}' is empty; download or write it again.")
    if head.startswith(_ZIP_MAGIC) and max_bytes is not None:
        _check_zip_sizes(local, max_bytes)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        return _torch_load(local)
    return _restricted_pickle_load(local, head)


def load_state_dict_file(
    path: str | os.PathLike[str], *, max_zip_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """Read the model weights stored in a checkpoint file, without running code from it.

    Args:
        path: Local ``.pth`` (``torch.save``) or model-zoo ``.pkl`` (pickle of numpy arrays).
            The format is detected from the content.

    Returns:
        ``{name: Tensor}`` on the CPU, in stored order and dtype; a leading ``module.`` is
        stripped when every name has it.

    Raises:
        ValueError: ``path`` is empty or a URL, or the file is truncated, corrupt, not a
            checkpoint, or holds Python objects beyond tensors/arrays and containers.
        UnsafeCheckpointError: A ``.pkl`` references a disallowed global (subclass of ValueError).
        FileNotFoundError: The file does not exist.

    ``max_zip_bytes``: refuse a file larger than this, or a ``torch.save`` zip whose entries declare
    more (checked before inflating anything); :func:`load_weights` sets it from the model's size
    (:func:`checkpoint_size_limit`).
    """
    local = check_weights_path(path)
    obj = read_checkpoint(local, max_bytes=max_zip_bytes)

    raw = _select_state_dict(obj, local)
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise InputError(f"Checkpoint '{local}' has a non-string tensor name {key!r}.")
        state_dict[key] = _to_tensor(key, value, local)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    logger.debug("Read %d tensors from '%s'", len(state_dict), local)
    return state_dict


# ---------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------
def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in total)" if len(names) > _MAX_LISTED else "")


def apply_state_dict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    allow_incomplete: bool = False,
    source: str = "<state dict>",
) -> LoadReport:
    """Copy matching tensors of ``state_dict`` into ``model`` after checking names and shapes.

    Values are cast to the dtype of the model tensor they replace.  Checkpoint names the
    model lacks are reported and logged as warnings.  Top-level ``pixel_mean``/``pixel_std``
    buffers may be absent from the checkpoint (they come from the config), as in detectron2.

    Args:
        model: Module to load into (modified in place).
        state_dict: ``{name: Tensor}``, e.g. from :func:`load_state_dict_file`.
        allow_incomplete: Load what fits and only warn about missing names and shape
            mismatches, instead of raising.
        source: Where the tensors come from, for messages.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: No name matches the model at all; or, unless ``allow_incomplete``,
            some model names are missing or have a different shape in the checkpoint.
    """
    model_state = model.state_dict()
    matched = [k for k in state_dict if k in model_state]
    if model_state and not matched:
        raise InputError(
            f"None of the {len(state_dict)} tensors in '{source}' match the model's "
            f"{len(model_state)} parameter names; it is a checkpoint for a different model or config. "
            f"Checkpoint names: {_listing(list(state_dict))}. Model names: {_listing(list(model_state))}."
        )
    report = LoadReport(source=source)
    report.unexpected = [k for k in state_dict if k not in model_state]
    report.missing = [k for k in model_state if k not in state_dict and k not in _OPTIONAL_MODEL_KEYS]
    report.shape_mismatch = [
        (k, tuple(state_dict[k].shape), tuple(model_state[k].shape))
        for k in matched
        if tuple(state_dict[k].shape) != tuple(model_state[k].shape)
    ]

    problems = []
    if report.missing:
        problems.append(
            f"{len(report.missing)} model tensors missing from the checkpoint: {_listing(report.missing)}"
        )
    if report.shape_mismatch:
        mismatches = [f"{k} (checkpoint {list(c)} vs model {list(m)})" for k, c, m in report.shape_mismatch]
        problems.append(f"{len(mismatches)} shape mismatches: {_listing(mismatches)}")
    if problems and not allow_incomplete:
        raise InputError(
            f"Checkpoint '{source}' does not fit the model: " + "; ".join(problems) + ". "
            "Check that the config matches the checkpoint (e.g. MODEL.VOVNET.CONV_BODY, "
            "MODEL.FCOS.NUM_CLASSES), or pass allow_incomplete=True to load only what fits."
        )
    for problem in problems:
        logger.warning("Checkpoint '%s': %s (left at their current values)", source, problem)
    if report.unexpected:
        logger.warning(
            "Checkpoint '%s': %d tensors not used by the model: %s",
            source,
            len(report.unexpected),
            _listing(report.unexpected),
        )

    mismatched = {k for k, _, _ in report.shape_mismatch}
    to_load = {
        k: state_dict[k].to(dtype=model_state[k].dtype) for k in matched if k not in mismatched
    }
    model.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)
    logger.info("Loaded %d of %d model tensors from '%s'", len(to_load), len(model_state), source)
    return report


def load_weights(
    model: torch.nn.Module, path: str | os.PathLike[str], *, allow_incomplete: bool = False
) -> LoadReport:
    """Read a checkpoint file (see :func:`load_state_dict_file`) and load it into ``model``.

    Args:
        model: Module to load into (modified in place).
        path: Local ``.pth``/``.pkl`` checkpoint, typically ``cfg.MODEL.WEIGHTS``.
        allow_incomplete: Warn instead of raising on missing names and shape mismatches.

    Returns:
        A :class:`LoadReport`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: URL or empty path, unreadable/unsafe file, or weights that do not fit.
    """
    state_dict = load_state_dict_file(path, max_zip_bytes=checkpoint_size_limit(model))
    return apply_state_dict(model, state_dict, allow_incomplete=allow_incomplete, source=os.fspath(path))
