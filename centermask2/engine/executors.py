"""Where a stage's work runs: one interface, three executors.

A stage (image inference :mod:`centermask2.engine.loop`, preprocessing to bins
:mod:`centermask2.offline.preprocess`, running bins :mod:`centermask2.offline.run`) is a plan (its
items, resume filtering), a picklable :class:`Job` applied to each item, and a reduction (results in
input order, the summary, failures). The plan and the reduction live in the stage, once; an executor
only maps the job over the items:

* :class:`LocalExecutor`: in this process, one item after the other;
* :class:`PoolExecutor`: a pool of local processes (jobs without a model);
* :class:`~centermask2.engine.ray_executor.RayExecutor`: a Ray cluster, the model in a pool of actors
  that each open it once from the source's :class:`~centermask2.engine.sources.SourceRecipe`.

A job has three steps so that an executor can place them: :meth:`Job.prepare` (CPU work before the
model: read, resize), :meth:`Job.infer` (the model call, where the model lives) and
:meth:`Job.finish` (CPU work after it: post-processing, writing). A job without a model does
everything in ``prepare``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError

if TYPE_CHECKING:
    from .backend import Backend
    from .sources import ModelSource

__all__ = ["Job", "Done", "Executor", "ExecutorBase", "LocalExecutor", "PoolExecutor", "run_steps"]

logger = logging.getLogger(__name__)

# How often (s) a pool worker checks that the main process is still alive.
_PARENT_POLL_S = 1.0


class Job:
    """A stage's work on one item (picklable: it travels to pool workers and Ray tasks).

    Subclasses override the steps they need; the defaults pass values through.
    """

    def prepare(self, item: Any) -> Any:
        """CPU work before the model (or all of a job without one)."""
        return item

    def infer(self, backend: Backend, prepared: Any) -> Any:
        """The model step, run where the model lives."""
        return prepared

    def finish(self, item: Any, inferred: Any) -> Any:
        """CPU work after the model; its return value is the item's result."""
        return inferred


@dataclass
class Done:
    """One item's result and where its time went.

    Attributes:
        index: the item's position in the mapped sequence (executors may yield out of order).
        value: :meth:`Job.finish`'s return value.
        prepare_s, model_s, finish_s: seconds in each step.
        worker: the process id that ran the model step (or the whole job).
    """

    index: int
    value: Any
    prepare_s: float = 0.0
    model_s: float = 0.0
    finish_s: float = 0.0
    worker: int = 0


class Executor(Protocol):
    """Maps a :class:`Job` over items. Used as a context manager (a Ray executor connects on entry)."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def map(self, job: Job, items: Sequence[Any], source: ModelSource | None = None) -> Iterator[Done]:
        """Run ``job`` on every item, the model step on ``source``'s model (None: the job has none);
        yield each item's :class:`Done` as it completes, in any order."""
        ...

    def describe(self, workers: set[int]) -> str:
        """A clause for the stage's summary (e.g. the actors used), given the ``Done.worker`` seen."""
        ...

    def calls_at_once(self, source: ModelSource | None) -> int:
        """How many model calls on ``source`` one process of this executor runs at once (the
        summary divides the model's seconds by it to give the model's own rate)."""
        ...


def run_steps(job: Job, index: int, item: Any, backend: Backend | None, gate: Any = None) -> Done:
    """All three steps of ``job`` on one item in this process (the model step when ``backend`` is
    given, inside ``gate`` when one is given: ``model_s`` then leaves out the wait for it)."""
    t0 = time.perf_counter()
    prepared = job.prepare(item)
    t1 = time.perf_counter()
    with gate if gate is not None else contextlib.nullcontext():
        t2 = time.perf_counter()
        inferred = job.infer(backend, prepared) if backend is not None else prepared
        t3 = time.perf_counter()
    value = job.finish(item, inferred)
    return Done(index, value, t1 - t0, t3 - t2, time.perf_counter() - t3, os.getpid())


class ExecutorBase:
    """What executors share: a context manager that holds nothing, and no summary clause."""

    def __enter__(self) -> ExecutorBase:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self, workers: set[int]) -> str:
        return ""

    def calls_at_once(self, source: ModelSource | None) -> int:
        return 1


class LocalExecutor(ExecutorBase):
    """This process, on the source's own backend.

    With a model and ``overlap`` (the default), the steps of consecutive items overlap: while the
    model runs on one item, threads read and resize the next ones and post-process the previous
    one, so that a folder runs at the model's own rate. The model runs one call at a time, or as
    many as its backend's ``parallel_requests`` (OpenVINO's throughput mode). Each item's steps and
    result are the same as one after the other; only the order in which items reach the model and
    complete may differ (stages put results in input order), and a failure stops the map on the
    first failing item in input order, as one after the other would. Without a model, or with
    ``overlap=False``, items run one after the other.

    Args:
        overlap: overlap reading / post-processing with the model (default True).
    """

    def __init__(self, overlap: bool = True) -> None:
        self.overlap = overlap

    def map(self, job: Job, items: Sequence[Any], source: ModelSource | None = None) -> Iterator[Done]:
        backend = source.backend if source is not None else None
        if backend is None or not self.overlap or len(items) < 2:
            for index, item in enumerate(items):
                yield run_steps(job, index, item, backend)
            return
        yield from _overlapped(job, items, backend)

    def calls_at_once(self, source: ModelSource | None) -> int:
        if source is None or not self.overlap:
            return 1
        return _parallel_calls(source.backend)


def _parallel_calls(backend: Backend) -> int:
    """The backend's ``parallel_requests`` (OpenVINO's throughput mode), at least 1."""
    return max(int(getattr(backend, "parallel_requests", 1) or 1), 1)


def _overlapped(job: Job, items: Sequence[Any], backend: Backend) -> Iterator[Done]:
    """:class:`LocalExecutor`'s pipeline: each item's three steps in a thread, the model step
    behind a gate of the backend's ``parallel_requests`` (default 1), at most that many + 2 items
    in flight; :class:`Done` in order of completion. ``model_s`` is the model call alone (not the
    wait at the gate)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    calls = _parallel_calls(backend)
    gate = threading.BoundedSemaphore(calls)

    window = calls + 2
    pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="stage")
    index_of: dict[Any, int] = {}
    pending: set[Any] = set()

    def settle(finished: set[Any]) -> Iterator[Done]:
        """Yield the finished items; where one failed, stop as a run one after the other would: on
        the first failure in input order, after the items before it."""
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            first = min(index_of[f] for f in failed)
            earlier = {f for f in pending if index_of[f] < first}
            wait(earlier)
            done = sorted(finished | earlier, key=index_of.__getitem__)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
                yield future.result()
        for future in sorted(finished, key=index_of.__getitem__):
            yield future.result()

    try:
        for index, item in enumerate(items):
            future = pool.submit(run_steps, job, index, item, backend, gate)
            index_of[future] = index
            pending.add(future)
            if len(pending) < window:
                continue
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from settle(finished)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from settle(finished)
    finally:  # an error or Ctrl-C: items not started are dropped; running steps end on their own
        pool.shutdown(wait=False, cancel_futures=True)


def _exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when the main process is gone (e.g. killed with SIGKILL);
    leave Ctrl-C to the main process (which ends the pool), so that workers print no tracebacks."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _pool_task(args: tuple[Job, int, Any]) -> Done:
    job, index, item = args
    return run_steps(job, index, item, None)


def _default_start_method() -> str:
    # fork starts workers at once; jobs are spawn-safe for platforms without fork
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class PoolExecutor(ExecutorBase):
    """A pool of ``workers`` local processes, for jobs without a model (each worker runs whole jobs).

    Args:
        workers: processes (>= 1).
        start_method: multiprocessing start method (default ``"fork"`` where available, else
            ``"spawn"``); results do not depend on it.
    """

    def __init__(self, workers: int, start_method: str | None = None) -> None:
        if workers < 1:
            raise InputError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.start_method = start_method
        self._pool: Any = None

    def __enter__(self) -> PoolExecutor:
        # the pool starts here, before a stage's progress bar starts its monitor thread (no fork of
        # a threaded process)
        ctx = multiprocessing.get_context(self.start_method or _default_start_method())
        self._pool = ctx.Pool(self.workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def map(self, job: Job, items: Sequence[Any], source: ModelSource | None = None) -> Iterator[Done]:
        if source is not None:
            raise InputError("a process pool runs jobs without a model; run a model's stage in this process or on Ray")
        if not items:
            return
        if self._pool is None:
            with self:
                yield from self.map(job, items)
            return
        yield from self._pool.imap_unordered(_pool_task, [(job, i, item) for i, item in enumerate(items)], chunksize=1)

    def describe(self, workers: set[int]) -> str:
        return f"{self.workers} worker(s)"
