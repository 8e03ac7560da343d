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
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config.ranges import MAX_IMAGE_SIDE
from ..contract import MAX_DETECTIONS
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
    "unit_float",
    "MAX_BATCH_SIZE",
    "MAX_DETECTIONS",
    "MAX_RAY_ACTORS",
    "max_threads",
    "threads_int",
    "workers_int",
    "num_workers_int",
    "batch_size_int",
    "max_detections_int",
    "ray_actors_int",
    "opset_int",
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
    """argparse type for ``HxW`` sizes (``--input-size``, ``--pad-to``), e.g. ``1344x1344``: each side
    from 1 to :data:`~centermask2.config.ranges.MAX_IMAGE_SIDE`, the largest resize target a config
    may set (a larger padded input holds nothing but padding, and its buffers alone outgrow memory)."""
    try:
        size = parse_hw(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert size is not None
    if max(size) > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(
            f"size {text!r} is larger than {MAX_IMAGE_SIDE} pixels per side, the largest resize target a config may set "
            f"(INPUT.MAX_SIZE_TEST): images are never resized beyond it, and one {size[0]}x{size[1]} input alone takes "
            f"{3 * size[0] * size[1] / 1e9:.1f} GB as uint8"
        )
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


def unit_float(text: str) -> float:
    """argparse type for a score threshold: a number from 0 to 1 (``nan`` would compare false with every
    score and silently select nothing; ``inf`` would do the same)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1 (scores lie in [0, 1]), got {text!r}")
    return value


#: most images in one forward pass: a batch holds every padded image at once (1024 images of
#: 1344 x 1344 are 22 GB as float32), and a dynamic export accepts at most this batch
MAX_BATCH_SIZE = 1024
#: most Ray model actors: each holds a model and its runtime in memory
MAX_RAY_ACTORS = 1024


def max_threads() -> int:
    """Most CPU threads (or worker processes) an option may ask for: 4x this machine's CPUs, at
    least 64 (a Ray cluster's nodes may have more CPUs than the machine that starts the run)."""
    return max(4 * (os.cpu_count() or 1), 64)


def _bounded(text: str, minimum: int, maximum: int, unit: str, why: str) -> int:
    value = _int_at_least(text, minimum)
    if value > maximum:
        raise argparse.ArgumentTypeError(f"{value} is more than {maximum} {unit}: {why}")
    return value


def threads_int(text: str) -> int:
    """argparse type for ``--threads``: 1 to :func:`max_threads`."""
    return _bounded(text, 1, max_threads(), "threads",
                    f"the limit is 4x this machine's {os.cpu_count() or 1} CPU(s), at least 64; more threads than "
                    "cores only slow a runtime down, and thousands never finish starting")


def workers_int(text: str) -> int:
    """argparse type for ``--workers`` (processes): 1 to :func:`max_threads`."""
    return _bounded(text, 1, max_threads(), "processes",
                    f"the limit is 4x this machine's {os.cpu_count() or 1} CPU(s), at least 64; each worker is a "
                    "process with its own memory, and more than the cores only queue")


def num_workers_int(text: str) -> int:
    """argparse type for data-loading processes that may be 0 (``--num-workers``): 0 to :func:`max_threads`."""
    return _bounded(text, 0, max_threads(), "processes",
                    f"the limit is 4x this machine's {os.cpu_count() or 1} CPU(s), at least 64; each worker is a "
                    "process with its own memory, and more than the cores only queue")


def batch_size_int(text: str) -> int:
    """argparse type for ``--batch-size``: 1 to :data:`MAX_BATCH_SIZE`."""
    return _bounded(text, 1, MAX_BATCH_SIZE, "images",
                    "a batch holds all its padded images in memory at once (1024 images of 1344x1344 are 22 GB as "
                    "float32)")


def max_detections_int(text: str) -> int:
    """argparse type for ``--max-detections``: 1 to :data:`~centermask2.contract.MAX_DETECTIONS`."""
    return _bounded(text, 1, MAX_DETECTIONS, "rows per image",
                    "every row carries a 28x28 mask, so 10000 rows are already 31 MB of outputs per image, and no "
                    "runtime allocates the outputs of many more")


def ray_actors_int(text: str) -> int:
    """argparse type for ``--ray-actors``: 1 to :data:`MAX_RAY_ACTORS`."""
    return _bounded(text, 1, MAX_RAY_ACTORS, "actors", "each actor holds a model and its runtime in memory")


def opset_int(text: str) -> int:
    """argparse type for ``--opset``: an integer (the exporter checks the range it writes,
    :func:`~centermask2.export.onnx.check_opset_range`)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


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
        return PoolExecutor(workers) if workers and workers > 1 else LocalExecutor(overlap=not getattr(args, "no_overlap", False))
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


def disk_full_message(exc: OSError) -> str:
    """What a full disk (or quota) means for the user: the file that could not be written, and the fix."""
    what = exc.strerror or os.strerror(exc.errno)
    where = f" writing {exc.filename!r}" if exc.filename else ""
    return (f"{what}{where}: free some space on that disk (or choose an output folder on another one) and run the "
            "same command again (with --resume where the script has it: what is written is complete)")


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
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return report_error(disk_full_message(exc), EXIT_ITEMS_FAILED)
        return report_error(exc, EXIT_ITEMS_FAILED)
    except KeyboardInterrupt:
        hint = "; what is written is complete: run the same command with --resume to finish" if resumable else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
