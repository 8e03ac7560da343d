"""What every stage script shares: argument types, config arguments, logging, exit codes.

Exit codes (:mod:`centermask2.errors`): 0 done; 1 the run finished but items failed (named in
the output); 2 bad arguments or input files, detected before any heavy work; 130 on Ctrl-C,
with a hint to rerun with ``--resume`` where the script has it. :func:`run_main` is the one
place that turns errors into these codes: the toolkit's own errors
(:class:`~centermask2.errors.CenterMask2Error`) become a one-line ``error: ...`` message, and
anything else keeps its traceback, because it is a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..data.spec import parse_hw
from ..engine.onnxruntime_backend import PROVIDERS
from ..errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, CenterMask2Error, InputError
from ..fileio import output_session

if TYPE_CHECKING:
    from ..engine.executors import Executor

__all__ = [
    "PROVIDER_CHOICES",
    "new_parser",
    "hw_type",
    "positive_int",
    "non_negative_int",
    "add_config_arguments",
    "add_overrides",
    "make_executor",
    "parse_args",
    "setup_logging",
    "report_error",
    "run_main",
]

logger = logging.getLogger("centermask2.cli")

#: ``--provider`` choices: the ONNX Runtime execution providers the backend knows
PROVIDER_CHOICES = tuple(PROVIDERS)

# third-party loggers that narrate exports and graph rewrites at INFO level
_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export", "onnxslim")


def new_parser(prog: str, description: str, epilog: str | None = None, *, raw: bool = True) -> argparse.ArgumentParser:
    """The parser of a stage script (``raw``: keep the description's and epilog's line breaks)."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
    )


def hw_type(text: str) -> tuple[int, int]:
    """argparse type for ``HxW`` sizes, e.g. ``--input-size 1344x1344``."""
    try:
        size = parse_hw(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert size is not None
    return size


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts that must be >= 1 (``--batch-size``, ``--threads``, ``--workers``)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0 (``--num-workers``: 0 loads data in the main process)."""
    return _int_at_least(text, 0)


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = False, help: str | None = None) -> None:
    """``--config-file`` (a model config YAML)."""
    parser.add_argument(
        "--config-file", required=required,
        help=help or "model config YAML, e.g. configs/centermask/<name>.yaml",
    )


def add_ray_argument(parser: argparse.ArgumentParser, what: str, shared: str) -> None:
    """``--ray [ADDRESS]`` (None: no Ray; ``""``: a local instance; else a cluster address)."""
    parser.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help=f'{what} (pip install -e ".[ray]"): without ADDRESS a local instance sized to this machine; '
        f"auto, ray://host:port or host:port: an existing cluster ({shared} on a path every node sees)",
    )


def make_executor(args: argparse.Namespace) -> Executor:
    """Where a stage script's work runs: Ray with ``--ray`` (``--ray-actors``), a process pool with
    ``--workers N`` (N > 1), else this process.

    Raises:
        MissingDependencyError: ``--ray`` without Ray installed; InputError: a malformed address,
        or ``--ray-actors`` / ``--workers`` where they do not apply.
    """
    from ..engine.executors import LocalExecutor, PoolExecutor

    ray, actors, workers = (getattr(args, name, None) for name in ("ray", "ray_actors", "workers"))
    if ray is None:
        if actors is not None:
            raise InputError("--ray-actors is for --ray (a Ray cluster or local instance)")
        return PoolExecutor(workers) if workers and workers > 1 else LocalExecutor()
    if workers is not None:
        raise InputError("--workers is for runs without --ray (Ray runs one task per image on the cluster's CPUs)")
    from ..engine.ray_executor import RayExecutor

    return RayExecutor(ray, actors=actors)


def add_overrides(parser: argparse.ArgumentParser, help: str = "config overrides: KEY VALUE ...") -> None:
    """Trailing ``KEY VALUE`` config overrides (``opts``); add it last."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, help=help)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` plus the checks every script needs: an option written after the
    ``KEY VALUE`` overrides (where argparse would take it for an override) is refused by name.

    Raises:
        InputError: an option among the overrides.
    """
    args = parser.parse_args(argv)
    stray = [item for item in getattr(args, "opts", None) or [] if item.startswith("--")]
    if stray:
        raise InputError(
            f"{', '.join(stray)} came after the KEY VALUE config overrides, which take everything that follows "
            f"them; put options first, e.g. ... {stray[0]} ... MODEL.WEIGHTS model.pth"
        )
    return args


def setup_logging(quiet_third_party: bool = True) -> None:
    """Plain ``message`` lines on stderr at INFO; exporter internals kept to warnings."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if quiet_third_party:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def report_error(exc: BaseException | str, exit_code: int | None = None) -> int:
    """Log ``error: <message>`` and return the exit code (``exc.exit_code`` by default)."""
    logger.error("error: %s", exc)
    if exit_code is not None:
        return exit_code
    return int(getattr(exc, "exit_code", EXIT_ITEMS_FAILED))


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *,
             resumable: bool = False) -> int:
    """Run a script's ``main`` and map what escapes it to an exit code.

    Args:
        main: parses ``argv`` and does the work; returns the exit code.
        argv: arguments (None: ``sys.argv[1:]``).
        resumable: the script has ``--resume`` (said in the Ctrl-C message).

    Returns:
        ``main``'s code; argparse's (0 for ``--help``, 2 for a usage error); a :class:`~centermask2.errors.CenterMask2Error`'s ``exit_code``; 1 for an
        operating-system error during the run (disk full, file removed meanwhile); 130 on Ctrl-C.
    """
    try:
        with output_session():  # the output folders it locked are released when it returns
            return main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BAD_INPUT)
    except CenterMask2Error as exc:
        return report_error(exc)
    except OSError as exc:
        return report_error(exc, EXIT_ITEMS_FAILED)
    except KeyboardInterrupt:
        hint = "; what is written is complete: run the same command with --resume to finish" if resumable else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
