"""A Ray cluster as an :class:`~centermask2.engine.executors.Executor`.

Ray Data's streaming shape for batch inference, for any stage's :class:`~centermask2.engine.executors.Job`:
the driver lists the items; Ray tasks run :meth:`Job.prepare` (read, resize); a pool of actors,
each holding one backend opened from the source's picklable
:class:`~centermask2.engine.sources.SourceRecipe`, runs :meth:`Job.infer` (``map_batches``); tasks
run :meth:`Job.finish` (post-process, write); the stage on the driver gathers the results, so resume,
ordering and summaries are the stage's, the same as in one process. A job without a model runs
whole as one task per item (one CPU each).

A killed actor is replaced and its batches redone (Ray Data's actor pools restart actors and
resubmit their batches: ``max_restarts=-1``, ``max_task_retries=-1``); a failed task is retried by
Ray. Paths sent to the cluster are absolute: images, models and bins must be on a filesystem every
node sees at the same path.

An optional extra: ``pip install -e ".[ray]"``. Ray is imported on use, never by importing this
module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CenterMask2Error, InputError, MissingDependencyError
from .executors import Done, ExecutorBase, Job, run_steps

if TYPE_CHECKING:
    from .sources import ModelSource, SourceRecipe

__all__ = ["RayExecutor", "require_ray", "split_address", "check_address", "ray_session"]

logger = logging.getLogger(__name__)

#: object store of a local instance: small, the machine is shared with other work
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
_ADDRESS = re.compile(r"^(auto|ray://\S+|[\w.\-]+:\d+)$")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
# Ray's C++ log level for this driver while connecting: its per-actor notices (constructor
# arguments in the object store) are not for our users; errors still reach us as exceptions
_BACKEND_LOG_LEVEL = "fatal"


def require_ray() -> Any:
    """``import ray`` (with Ray Data), or one clear line saying what to install.

    Raises:
        MissingDependencyError: Ray is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401 - the pipeline's engine
    except ImportError as exc:
        raise MissingDependencyError(
            'Ray is not installed: pip install -e ".[ray]" (or pip install "ray[data]")'
        ) from exc
    return ray


def split_address(address: str | None, opts: Sequence[str]) -> tuple[str | None, list[str]]:
    """``--ray``'s value and the ``KEY VALUE`` overrides, taking back a config key that argparse gave
    ``--ray`` as its address: ``--ray MODEL.WEIGHTS m.pth`` is a local instance and an override."""
    if address and _CONFIG_KEY.match(address):
        return "", [address, *opts]
    return address, list(opts)


def check_address(address: str | None) -> str | None:
    """``--ray ADDRESS``: None or ``""`` (a local instance), ``auto``, ``ray://host:port`` or ``host:port``.

    Raises:
        InputError: anything else (e.g. a host without its port).
    """
    if not address:
        return None
    if not _ADDRESS.match(address):
        raise InputError(
            f"--ray {address!r} is not a cluster address; use auto, ray://host:port or host:port, or --ray "
            "alone for a local instance"
        )
    return address


# ---------------------------------------------------------------- the session


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 (Ray's C++ start-up lines)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _quiet_ray_data() -> None:
    """Ray Data without its progress bars and execution banners: the driver shows one bar."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    notices = logging.getLogger("ray.data._internal.progress")  # where Ray Data says its bars are off
    if not any(isinstance(f, _DropProgressBarNotice) for f in notices.filters):
        notices.addFilter(_DropProgressBarNotice())


class _DropProgressBarNotice(logging.Filter):
    """Drops Ray Data's notice that its progress bars are off (they are, on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[float]:
    """Connect to a Ray cluster, or start a local instance, for the duration of the block.

    Without ``address`` a local instance sized to this machine (``num_cpus``, default
    ``os.cpu_count()``, and a :data:`LOCAL_OBJECT_STORE_BYTES` object store); with ``auto``,
    ``ray://host:port`` or ``host:port`` an existing cluster. Ray's own logging stays off the
    terminal (no dashboard, worker output not forwarded, errors only, no Ray Data
    progress bars). An instance already initialized in this process is used as is; only an
    instance started here is shut down at the end.

    Yields:
        the cluster's CPUs.

    Raises:
        MissingDependencyError: Ray is not installed.
        InputError: a malformed address.
    """
    ray = require_ray()
    address = check_address(address)
    started = False
    if not ray.is_initialized():
        settings: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                    "logging_level": logging.ERROR, "configure_logging": True}
        if address is None:
            settings.update(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:
            settings["address"] = address
        previous = os.environ.get("RAY_BACKEND_LOG_LEVEL")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", _BACKEND_LOG_LEVEL)
        try:
            with _stderr_captured() as native:
                ray.init(**settings)
        finally:
            if previous is None:
                os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
        for line in native:
            if line.strip() and "RAY_BACKEND_LOG_LEVEL" not in line:
                logger.warning("%s", line)
        started = True
        where = address or f"a local instance ({settings['num_cpus']} CPUs)"
        logger.info("Ray: connected to %s", where)
    _quiet_ray_data()
    try:
        yield float(ray.cluster_resources().get("CPU", 0))
    finally:
        if started:
            ray.shutdown()


def _actor_count(actors: int | None, threads: int) -> int:
    """``actors`` (default: as many as the cluster's CPUs hold at ``threads`` each), checked to fit."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    fit = cpus // threads
    if actors is None:
        actors = max(fit, 1)
    if actors * threads > cpus:
        raise InputError(
            f"--ray-actors {actors} x --threads {threads} needs {actors * threads} CPUs but the Ray cluster has "
            f"{cpus}; use --ray-actors {max(fit, 1)}{' --threads 1' if fit < 1 else ''} or add nodes"
        )
    return actors


# Tasks declare no CPU: they are light next to the model, and must not wait for the CPUs the
# actors hold for the whole run (Ray Data caps how many run at once).
_TASK_ARGS: dict[str, Any] = {"num_cpus": 0}


def _task_pool(actors: int, inputs: int) -> Any:
    """Reading and post-processing tasks at once: enough to keep ``actors`` busy, no more than ``inputs``
    (Ray Data warns about a pool larger than its inputs)."""
    import ray.data

    return ray.data.TaskPoolStrategy(size=max(1, min(max(2, actors), inputs)))


def _pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(data: Any) -> Any:
    return pickle.loads(bytes(data))



# ---------------------------------------------------------------- the executor


def _prepare_task(row: dict[str, Any], job: Job) -> dict[str, Any]:
    """Task: :meth:`Job.prepare` of one item."""
    t0 = time.perf_counter()
    prepared = job.prepare(_unpack(row["item"]))
    return {"key": row["key"], "item": row["item"], "prepared": _pack((prepared, time.perf_counter() - t0))}


class _ModelActor:
    """Actor: one backend, opened from a :class:`SourceRecipe` on the node it runs on; runs :meth:`Job.infer`."""

    def __init__(self, recipe: SourceRecipe, job: Job) -> None:
        self.backend = recipe.build().backend
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inferred = []
        for data in batch["prepared"]:
            prepared, prepare_s = _unpack(data)
            t0 = time.perf_counter()
            value = self.job.infer(self.backend, prepared)
            inferred.append(_pack((value, prepare_s, time.perf_counter() - t0, os.getpid())))
        return {"key": batch["key"], "item": batch["item"], "inferred": np.array(inferred, dtype=object)}


def _finish_task(row: dict[str, Any], job: Job) -> dict[str, Any]:
    """Task: :meth:`Job.finish` of one item."""
    value, prepare_s, model_s, pid = _unpack(row["inferred"])
    t0 = time.perf_counter()
    result = job.finish(_unpack(row["item"]), value)
    return {"done": _pack(Done(int(row["key"]), result, prepare_s, model_s, time.perf_counter() - t0, pid))}


def _whole_task(row: dict[str, Any], job: Job) -> dict[str, Any]:
    """Task: a job without a model, all its steps."""
    return {"done": _pack(run_steps(job, int(row["key"]), _unpack(row["item"]), None))}


def _unwrap(exc: BaseException) -> BaseException:
    """The toolkit's own error inside Ray's wrappers (so a task's ``BackendError`` prints as one
    line), else ``exc``: the deepest exception of the chain whose class is one of
    :mod:`centermask2.errors`' own (Ray's re-raised copies are subclasses of both)."""
    found: BaseException = exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CenterMask2Error) and type(current).__module__ == CenterMask2Error.__module__:
            found = current
        current = getattr(current, "cause", None) or current.__cause__
    return found


class RayExecutor(ExecutorBase):
    """Runs jobs on a Ray cluster (see the module docstring); connects on ``__enter__``.

    Args:
        address: None or ``""`` for a local instance sized to this machine; ``auto``,
            ``ray://host:port`` or ``host:port`` for an existing cluster.
        actors: model actors (default: as many as the cluster's CPUs hold at the recipe's threads).
        num_cpus: CPUs of a local instance (default ``os.cpu_count()``).

    Raises:
        MissingDependencyError: Ray is not installed; InputError: a malformed address (both at
            construction, before any heavy work).
    """

    def __init__(self, address: str | None = None, *, actors: int | None = None, num_cpus: int | None = None) -> None:
        require_ray()
        self.address = check_address(address)
        self.actors = actors
        self.num_cpus = num_cpus
        self._session: contextlib.AbstractContextManager | None = None
        #: actors and threads of the last :meth:`map` with a model
        self.used_actors = 0
        self.threads = 0

    def __enter__(self) -> RayExecutor:
        self._session = ray_session(self.address, num_cpus=self.num_cpus)
        self._session.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._session is not None:
            self._session.__exit__(*exc)
            self._session = None

    def map(self, job: Job, items: Sequence[Any], source: ModelSource | None = None) -> Iterator[Done]:
        import ray

        if not items:
            return
        if self._session is None:
            with self:
                yield from self.map(job, items, source)
            return
        rows = [{"key": k, "item": _pack(item)} for k, item in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        if source is None:
            ds = ds.map(_whole_task, fn_kwargs={"job": job}, num_cpus=1)
        else:
            if source.recipe is None:
                raise InputError(f"{source.label} was not opened by open_model: Ray actors cannot open it")
            recipe = source.recipe.for_cluster(source)
            self.threads = recipe.threads
            # an actor without an item would only load the model
            self.used_actors = min(_actor_count(self.actors, recipe.threads), len(rows))
            tasks = _task_pool(self.used_actors, len(rows))
            ds = (
                ds.map(_prepare_task, fn_kwargs={"job": job}, compute=tasks, **_TASK_ARGS)
                .map_batches(
                    _ModelActor, fn_constructor_kwargs={"recipe": recipe, "job": job}, batch_size=1,
                    batch_format="numpy",
                    # Ray Data restarts a dead actor and resubmits its batches (max_restarts=-1,
                    # max_task_retries=-1 are its defaults for actor pools)
                    compute=ray.data.ActorPoolStrategy(size=self.used_actors), num_cpus=recipe.threads,
                )
                .map(_finish_task, fn_kwargs={"job": job}, compute=tasks, **_TASK_ARGS)
            )
        try:
            for row in ds.iter_rows():
                yield _unpack(row["done"])
        except Exception as exc:  # noqa: BLE001 - Ray wraps the task's exception
            inner = _unwrap(exc)
            if inner is exc:
                raise
            raise inner from None

    def describe(self, workers: set[int]) -> str:
        if not self.used_actors:
            return "Ray"
        replaced = len(workers) - self.used_actors
        extra = f"; {replaced} replaced after a failure, their items redone" if replaced > 0 else ""
        return f"Ray: {self.used_actors} actor(s) x {self.threads} thread(s){extra}"
