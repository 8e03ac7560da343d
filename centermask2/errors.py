"""The toolkit's errors: one small hierarchy, one exit code each.

Every error a user can cause (a bad argument, a missing or malformed file, an output folder
that cannot be written, a model feature we do not run) is a :class:`CenterMask2Error` whose
message names the file or value and says how to fix it. The command-line scripts catch exactly
this family (:func:`centermask2.cli.common.run_main`) and turn it into an exit code and a
one-line message; anything else is a bug and keeps its traceback.

Each class also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` around library calls keeps working.
"""

from __future__ import annotations

__all__ = [
    "CenterMask2Error",
    "InputError",
    "ConfigError",
    "MissingFileError",
    "OutputError",
    "UnsupportedError",
    "MissingDependencyError",
    "BackendError",
    "ItemError",
    "EXIT_OK",
    "EXIT_ITEMS_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
]

#: every item done
EXIT_OK = 0
#: the run finished but some items (images, bins) failed; they are named in the output
EXIT_ITEMS_FAILED = 1
#: bad arguments or input files, detected before any heavy work
EXIT_BAD_INPUT = 2
#: Ctrl-C (128 + SIGINT); rerunning with ``--resume`` continues
EXIT_INTERRUPTED = 130


class CenterMask2Error(Exception):
    """Base class: a problem the user can fix, described in the message."""

    #: process exit status the command-line scripts use for it
    exit_code = EXIT_BAD_INPUT


class InputError(CenterMask2Error, ValueError):
    """A bad argument, setting or input file content (detected before work starts)."""


class ConfigError(InputError):
    """A configuration file or value is invalid (bad type, bad YAML, bad structure).

    Also raised by model code for a config value it cannot build; :mod:`centermask2.config`
    re-exports it."""


class MissingFileError(CenterMask2Error, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputError(CenterMask2Error, PermissionError):
    """An output location cannot be created or written."""


class UnsupportedError(CenterMask2Error, NotImplementedError):
    """A valid configuration this toolkit does not run (yet)."""


class MissingDependencyError(CenterMask2Error, ImportError):
    """An optional package is needed for what was asked; the message says what to install."""


class BackendError(CenterMask2Error, RuntimeError):
    """An inference runtime is unavailable or refused the model."""


class ItemError(CenterMask2Error, ValueError):
    """One item of a run (an image, a bin) is unusable; stages name it, skip it and go on."""

    exit_code = EXIT_ITEMS_FAILED
