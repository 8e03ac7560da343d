"""The image -> COCO results loop, the ``.bin`` preprocessing and the ``.bin`` runs on a Ray cluster.

Ray Data's streaming shape for batch inference: the driver lists the images (the same list, ids
and backend calls as :func:`~centermask2.engine.loop.run_inference`); Ray tasks read and resize
them (:func:`~centermask2.engine.loop.load_batch`, :func:`~centermask2.data.transforms.pad_batch`);
a pool of actors, each holding one backend session built from a picklable
:class:`SourceRecipe`, runs the model (``map_batches``); tasks post-process to COCO records
(:func:`~centermask2.engine.loop.image_results`); the driver gathers them, persists each image's
records as they arrive (``--resume``) and writes the results in input order, so the file is
byte-for-byte the one a single-process run with the same threads writes.

A killed actor is replaced and its batches redone (Ray Data's actor pools restart actors and
resubmit their batches: ``max_restarts=-1``, ``max_task_retries=-1``); a failed task is retried by Ray. Paths sent to the cluster are
absolute: images, models and bins must be on a filesystem every node sees at the same path.

An optional extra: ``pip install -e ".[ray]"``. Ray is imported on use, never by importing this
module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.catalog import ImageRecord
from ..errors import InputError, MissingDependencyError
from .loop import InferenceSummary, batches, image_results, load_batch
from .sources import SourceRecipe

if TYPE_CHECKING:
    from ..data.spec import InputSpec
    from ..offline.preprocess import JobResult, PreprocessJob, PreprocessSpec, PreprocessSummary
    from ..offline.run import BinRunSummary
    from .sources import ModelSource

__all__ = [
    "SourceRecipe",
    "RayInferenceSummary",
    "require_ray",
    "split_address",
    "check_address",
    "ray_session",
    "ray_infer",
    "ray_preprocess_to_bins",
    "ray_run_bins",
]

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
    except ImportError:
        raise MissingDependencyError(
            'Ray is not installed: pip install -e ".[ray]" (or pip install "ray[data]")'
        ) from None
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


@dataclass
class RayInferenceSummary(InferenceSummary):
    """:class:`~centermask2.engine.loop.InferenceSummary` of a Ray run.

    Attributes:
        actors, threads: the model actors and the CPU threads of each.
        actor_pids: every actor process that ran a batch (more than ``actors`` when one was
            killed and replaced).
    """

    actors: int = 0
    threads: int = 0
    actor_pids: set[int] = field(default_factory=set)
    first_result_s: float = 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Images per second after the first result (start-up excluded: actors loading the model)."""
        rest = self.wall_s - self.first_result_s
        return (self.num_images - 1) / rest if self.num_images > 1 and rest > 0 else 0.0

    def format(self) -> str:
        replaced = len(self.actor_pids) - self.actors
        extra = f"; {replaced} replaced after a failure, their images redone" if replaced > 0 else ""
        return (f"{super().format()}. Ray: {self.actors} actor(s) x {self.threads} thread(s), first result after "
                f"{self.first_result_s:.1f} s, then {self.steady_images_per_s:.2f} img/s{extra}")


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


# ---------------------------------------------------------------- images -> COCO records


def _decode(row: dict[str, Any], spec: InputSpec) -> dict[str, Any]:
    """Task: read and resize the images of one backend call and pad them into its batch."""
    from ..data.transforms import pad_batch

    t0 = time.perf_counter()
    batch = [ImageRecord(int(i), name, Path(path)) for i, name, path in json.loads(row["images"])]
    loaded, readable, failed = load_batch(batch, spec)
    images = sizes = None
    if readable:
        images, sizes = pad_batch([im for im, _ in loaded], spec)
    return {"key": row["key"], "payload": _pack({
        "images": images, "image_sizes": sizes, "ids": [r.image_id for r in readable],
        "originals": [hw for _, hw in loaded], "failed": failed, "preprocess_s": time.perf_counter() - t0,
    })}


class _ModelActor:
    """Actor: one backend session, built from a :class:`SourceRecipe` on the node it runs on."""

    def __init__(self, recipe: SourceRecipe) -> None:
        self.backend = recipe.build().backend

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for data in batch["payload"]:
            item = _unpack(data)
            t0 = time.perf_counter()
            if item["images"] is not None:
                item["outputs"] = self.backend.run({"images": item["images"], "image_sizes": item["image_sizes"]})
            item["model_s"] = time.perf_counter() - t0
            item["pid"] = os.getpid()
            del item["images"]
            payloads.append(_pack(item))
        return {"key": batch["key"], "payload": np.array(payloads, dtype=object)}


def _postprocess(row: dict[str, Any], ids: Sequence[int], mask_threshold: float) -> dict[str, Any]:
    """Task: one backend call's outputs -> COCO records per image."""
    item = _unpack(row["payload"])
    t0 = time.perf_counter()
    results, detections = [], 0
    for i, (image_id, original) in enumerate(zip(item["ids"], item["originals"])):
        sizes = item["image_sizes"]
        det, records = image_results(item["outputs"], i, (int(sizes[i, 0]), int(sizes[i, 1])), original,
                                     image_id, ids, mask_threshold)
        detections += int(det["boxes"].shape[0])
        results.append((image_id, records))
    return {"key": row["key"], "payload": _pack({
        "results": results, "failed": item["failed"], "num_detections": detections, "pid": item["pid"],
        "preprocess_s": item["preprocess_s"], "model_s": item["model_s"], "postprocess_s": time.perf_counter() - t0,
    })}


def ray_infer(
    source: ModelSource,
    records: Sequence[ImageRecord],
    contiguous_to_dataset_id: Sequence[int],
    *,
    recipe: SourceRecipe,
    actors: int | None = None,
    mask_threshold: float = 0.5,
    progress: bool = True,
    done: Mapping[int, list[dict[str, Any]]] | None = None,
    on_results: Callable[[ImageRecord, list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], RayInferenceSummary]:
    """:func:`~centermask2.engine.loop.run_inference` on the Ray cluster of :func:`ray_session`
    (an :data:`~centermask2.engine.loop.Infer` for :func:`~centermask2.engine.loop.run_to_folder`).

    Args:
        source: the driver's build of ``recipe`` (input rules, batch size).
        records: images, in output order; their paths must be readable on every node.
        contiguous_to_dataset_id: category id of every contiguous class.
        recipe: what each actor builds its backend from; ``threads`` per actor (default 1).
        actors: model actors (default: as many as the cluster's CPUs hold).
        mask_threshold, progress, done, on_results: as for ``run_inference``; ``on_results`` is
            called on the driver as each image's records arrive.

    Returns:
        (COCO result dicts in image order, timing summary): the same results as ``run_inference``.

    Raises:
        InputError: more actors than the cluster's CPUs hold.
    """
    import ray
    from tqdm import tqdm

    start = time.perf_counter()
    done = dict(done or {})
    todo = [r for r in records if r.image_id not in done]
    remote = recipe.for_cluster(source)
    summary = RayInferenceSummary(num_resumed=len(records) - len(todo), threads=remote.threads)
    summary.actors = _actor_count(actors, remote.threads)
    if done:
        logger.info("Resuming: %d of %d image(s) already done", len(records) - len(todo), len(records))
    by_id = {r.image_id: r for r in todo}
    groups = list(batches(todo, source.batch_size))
    new: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="inference")
    try:
        if groups:
            summary.actors = min(summary.actors, len(groups))  # an actor without a batch would only load the model
            items = [{"key": k, "images": json.dumps([[r.image_id, r.file_name, os.path.abspath(r.path)] for r in g])}
                     for k, g in enumerate(groups)]
            ds = (
                ray.data.from_items(items, override_num_blocks=len(items))
                .map(_decode, fn_kwargs={"spec": source.spec}, compute=_task_pool(summary.actors, len(items)), **_TASK_ARGS)
                .map_batches(
                    _ModelActor, fn_constructor_kwargs={"recipe": remote}, batch_size=1, batch_format="numpy",
                    # Ray Data restarts a dead actor and resubmits its batches (max_restarts=-1,
                    # max_task_retries=-1 are its defaults for actor pools)
                    compute=ray.data.ActorPoolStrategy(size=summary.actors), num_cpus=remote.threads,
                )
                .map(_postprocess, fn_kwargs={"ids": list(contiguous_to_dataset_id), "mask_threshold": mask_threshold},
                     compute=_task_pool(summary.actors, len(items)), **_TASK_ARGS)
            )
            for row in ds.iter_rows():
                item = _unpack(row["payload"])
                if not summary.first_result_s:
                    summary.first_result_s = time.perf_counter() - start
                for name, reason in item["failed"]:
                    logger.warning("skipping %s: %s", name, reason)
                summary.failed.extend(item["failed"])
                for image_id, image_records in item["results"]:
                    new[image_id] = image_records
                    if on_results is not None:
                        on_results(by_id[image_id], image_records)
                summary.num_detections += item["num_detections"]
                summary.actor_pids.add(item["pid"])
                summary.preprocess_s.append(item["preprocess_s"])
                summary.postprocess_s.append(item["postprocess_s"])
                if item["results"]:
                    summary.model_s.append(item["model_s"])
                    summary.batch_sizes.append(len(item["results"]))
                    summary.num_images += len(item["results"])
                bar.update(len(item["results"]) + len(item["failed"]))
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - start
    order = {r.file_name: i for i, r in enumerate(records)}
    summary.failed.sort(key=lambda item: order.get(item[0], len(order)))  # input order, as run_inference
    results: list[dict[str, Any]] = []
    for rec in records:  # input order, resumed and new together
        results.extend(done.get(rec.image_id, new.get(rec.image_id, [])))
    return results, summary


# ---------------------------------------------------------------- images -> .bin inputs


def _preprocess_job(row: dict[str, Any]) -> dict[str, Any]:
    """Task: one image's two bins (:func:`centermask2.offline.preprocess.run_job` writes them)."""
    from ..offline.preprocess import run_job

    return {"key": row["key"], "result": _pack(run_job(_unpack(row["job"])))}


def ray_preprocess_to_bins(
    records: Sequence[ImageRecord],
    output_dir: str | os.PathLike,
    spec: PreprocessSpec,
    *,
    resume: bool = False,
    progress: bool = True,
) -> PreprocessSummary:
    """:func:`~centermask2.offline.preprocess.preprocess_to_bins` with its jobs as Ray tasks, one per
    image (one CPU each), on the cluster of :func:`ray_session`: the same checks, bins, info files
    and summary.

    ``output_dir`` must be the same folder on every node (a shared filesystem): the tasks write the
    bins there and the driver lists them in ``bin_info.json``.

    Raises:
        InputError: two images share a stem, or resuming over bins made with other settings.
        OutputError: ``output_dir`` is not a writable folder, or a task's bins are not visible to
            the driver (the folder is not shared).
    """
    import ray

    from ..errors import OutputError
    from ..offline import preprocess as stage

    def on_cluster(jobs: Sequence[PreprocessJob]) -> Iterator[JobResult]:
        if not jobs:
            return
        items = [{"key": job.index, "job": _pack(job)} for job in jobs]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(_preprocess_job, num_cpus=1)
        for row in ds.iter_rows():
            result: JobResult = _unpack(row["result"])
            job = jobs[result.index]
            if result.status == "written" and not stage.bin_paths(job.folder, job.stem)[1].is_file():
                raise OutputError(
                    f"the bins of {job.stem!r} written on the cluster are not in {job.folder!r} here: --output "
                    "must be a folder every node shares at the same path"
                )
            yield result

    return stage.preprocess_to_bins(records, output_dir, spec, resume=resume, progress=progress, map_jobs=on_cluster)


# ---------------------------------------------------------------- .bin inputs -> raw output bins


class _BinsActor:
    """Actor: one backend session; reads a batch of input bins, runs it, writes its output bins."""

    def __init__(self, recipe: SourceRecipe, info: str, out_dir: str, index_base: int) -> None:
        from ..contract import model_output_specs
        from ..offline.layout import BinInfo

        self.backend = recipe.build().backend
        self.info = BinInfo.load(info)
        self.info_dir = Path(info).parent
        self.out_dir = Path(out_dir)
        self.index_base = index_base
        self.specs = model_output_specs(self.backend.path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..errors import ItemError
        from ..offline.run import load_inputs, write_outputs

        payloads = []
        shape = [int(v) for v in self.info.shape]
        for data in batch["payload"]:
            images = [self.info.images[i] for i in _unpack(data)]
            t0 = time.perf_counter()
            arrays, good, failed = [], [], []
            for im in images:
                try:
                    arrays.append(load_inputs(self.info_dir, im, self.info.dtype, shape))
                    good.append(im)
                except ItemError as exc:
                    failed.append((im.bin, str(exc)))
            t1 = t2 = time.perf_counter()
            if good:
                out = self.backend.run({"images": np.concatenate([a for a, _ in arrays]),
                                        "image_sizes": np.concatenate([s for _, s in arrays])})
                t2 = time.perf_counter()
                for i, im in enumerate(good):
                    write_outputs(self.out_dir, im.stem, out, i, self.specs, self.index_base)
            payloads.append(_pack({"done": len(good), "failed": failed, "pid": os.getpid(), "read_s": t1 - t0,
                                   "model_s": t2 - t1, "write_s": time.perf_counter() - t2}))
        return {"payload": np.array(payloads, dtype=object)}


def ray_run_bins(
    recipe: SourceRecipe,
    backend: Any,
    bins: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    actors: int | None = None,
    index_base: int = 0,
    resume: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> BinRunSummary:
    """:func:`~centermask2.offline.run.run_bins` with a pool of model actors on the cluster of
    :func:`ray_session`: the same output bins and manifest.

    :func:`~centermask2.offline.run.prepare_bin_run` first does ``run_bins``' checks and writes the
    manifest here (before anything is run); the actors then run the bins still to do, reading them
    from ``bins`` and writing to ``output_dir`` (both on a path every node shares); finally
    the driver checks that every output is visible here and counts.

    Args:
        recipe: the ``"onnx"`` recipe each actor builds its backend from (``threads`` per actor).
        backend: this process's build of it.
        actors: model actors (default: as many as the cluster's CPUs hold).
        bins, output_dir, index_base, resume, progress, model_name: as for ``run_bins``.

    Raises:
        InputError, MissingFileError, OutputError: as ``run_bins``, before the cluster runs anything;
        OutputError also when the cluster's outputs are not visible here (a folder that is not shared).
    """
    import ray
    from tqdm import tqdm

    from ..errors import OutputError
    from ..offline import run as stage
    from ..offline.layout import INFO_JSON

    start = time.perf_counter()
    # the checks and the manifest here, before the cluster runs anything
    plan = stage.prepare_bin_run(backend, bins, output_dir, index_base=index_base, resume=resume, model_name=model_name)
    info_path = Path(bins) if Path(bins).is_file() else Path(bins) / INFO_JSON
    info, out_dir, batch_size = plan.info, plan.out_dir, plan.batch_size
    wanted = {im.stem for im in plan.todo}
    todo = [i for i, im in enumerate(info.images) if im.stem in wanted]
    remote = recipe.for_cluster()
    count = min(_actor_count(actors, remote.threads), max(1, -(-len(todo) // batch_size)))
    pids: set[int] = set()
    timings: list[dict[str, Any]] = []
    with tqdm(total=len(todo), unit="img", desc="model", disable=not progress) as bar:
        if todo:
            groups = [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)]
            ds = ray.data.from_items([{"payload": _pack(g)} for g in groups], override_num_blocks=len(groups)).map_batches(
                _BinsActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=count),
                num_cpus=remote.threads, fn_constructor_kwargs={
                    "recipe": remote, "info": os.path.abspath(info_path), "out_dir": os.path.abspath(out_dir),
                    "index_base": index_base,
                },
            )
            for row in ds.iter_rows():
                item = _unpack(row["payload"])
                pids.add(item["pid"])
                timings.append(item)
                bar.update(item["done"] + len(item["failed"]))
    summary = stage.BinRunSummary(num_resumed=plan.num_resumed)
    for item in timings:
        summary.failed.extend(item["failed"])
        if item["done"]:
            summary.num_images += item["done"]
            summary.model_s.append(item["model_s"])
            summary.batch_sizes.append(item["done"])
        summary.read_s += item["read_s"]
        summary.write_s += item["write_s"]
    order = {im.bin: k for k, im in enumerate(info.images)}
    summary.failed.sort(key=lambda failure: order.get(failure[0], len(order)))  # the info file's order
    for name, reason in summary.failed:
        logger.warning("Skipping %s: %s", name, reason)
    bad = {name for name, _ in summary.failed}
    unseen = [im.stem for im in plan.todo
              if im.bin not in bad and not stage.outputs_complete(out_dir, im.stem, plan.specs, index_base)]
    if unseen:
        raise OutputError(
            f"the outputs of {len(unseen)} image(s) written on the cluster (e.g. {unseen[0]!r}) are not in "
            f"{str(out_dir)!r} here: --output must be a folder every node shares at the same path"
        )
    summary.wall_s = time.perf_counter() - start
    logger.info("Ray: %d actor(s) x %d thread(s)%s", count, remote.threads,
                f"; {len(pids) - count} replaced after a failure" if len(pids) > count else "")
    return summary
