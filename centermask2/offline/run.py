"""Stage 2 of the offline ``.bin`` pipeline: run preprocessed bins through a model, write raw outputs.

Reads ``BINS/bin_info.json`` (see :mod:`.layout` for the layout), feeds every listed
images bin and its image_sizes bin to the model, and writes one ``RAW/<stem>_<k>.bin`` per
output ``k`` (model order) plus ``RAW/manifest.json``. The output files are exactly the bytes an
offline engine (ais_bench on an Ascend OM, a TensorRT runner, ...) writes for the same model, so
stage 3 (:mod:`.postprocess`) reads either.

A static model with batch size B gets B bins per run (a short last batch is filled by the
backend and the fill dropped). Bad input bins (missing, wrong size, image_sizes disagreeing
with ``bin_info.json``) are reported by name and skipped; the run goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import ModelMetadata, OutputSpec, model_output_specs
from ..engine.executors import Executor, Job, LocalExecutor
from ..errors import BackendError, InputError, ItemError, MissingFileError, OutputError
from ..fileio import ensure_writable_dir, file_digest, output_session, remove_stale_temp_files
from ..summary import StageSummary
from .layout import INFO_JSON, MANIFEST, BinImage, BinInfo, Manifest, output_path, read_array, write_array

if TYPE_CHECKING:
    from ..engine.backend import Backend
    from ..engine.sources import ModelSource

__all__ = [
    "BinRun",
    "BinRunSummary",
    "BinsJob",
    "check_bins_match_model",
    "load_inputs",
    "outputs_complete",
    "prepare_bin_run",
    "run_bins",
    "write_outputs",
]

logger = logging.getLogger(__name__)


def check_bins_match_model(info: BinInfo, metadata: ModelMetadata, model_name: str = "the model") -> None:
    """Check that bins made by stage 1 fit the model's input.

    Args:
        info: the bins' :class:`BinInfo`.
        metadata: the model's :class:`~centermask2.contract.ModelMetadata`.
        model_name: for messages.

    Raises:
        InputError: dtype, shape or channel order differ; the message says how to remake the bins.
    """
    remake = f"re-run preprocess_inputs_to_bin.py with --model {model_name}"
    if info.dtype != metadata.input_dtype:
        raise InputError(f"the bins are {info.dtype} but {model_name} takes {metadata.input_dtype} input; {remake}")
    shape = [int(v) for v in info.shape]
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3:
        raise InputError(f"bin_info shape {shape} is not [1, 3, H, W]; {remake}")
    if metadata.dynamic:
        d = max(int(metadata.size_divisibility), 1)
        if shape[2] % d or shape[3] % d:
            raise InputError(f"bins of {shape[2]}x{shape[3]} are not multiples of {model_name}'s size divisibility {d}")
    elif tuple(shape[2:]) != tuple(metadata.input_size):
        h, w = metadata.input_size
        raise InputError(f"the bins are {shape[2]}x{shape[3]} but {model_name} takes {h}x{w} input; {remake}")
    if info.input_format != metadata.input_format:
        raise InputError(
            f"the bins are {info.input_format} but {model_name} expects {metadata.input_format} channels; {remake}"
        )
    if (info.min_size, info.max_size) != (metadata.min_size, metadata.max_size):
        logger.warning(
            "The bins were resized with min/max size %d/%d but %s was configured with %d/%d; results will differ "
            "from running the model on the images",
            info.min_size, info.max_size, model_name, metadata.min_size, metadata.max_size,
        )


def outputs_complete(folder: Path, stem: str, specs: Sequence[OutputSpec], index_base: int) -> bool:
    """Every output bin of ``stem`` exists with the right size."""
    for spec in specs:
        try:
            if output_path(folder, stem, spec.index, index_base).stat().st_size != spec.nbytes:
                return False
        except FileNotFoundError:
            return False
    return True


def load_inputs(info_dir: Path, im: BinImage, dtype: str, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's ``images`` [1, 3, H, W] and ``image_sizes`` [1, 2] int64 from its bins.

    Raises:
        ItemError: a bin is missing, has the wrong size, or its image_sizes disagree with the info file.
    """
    if im.resized_height > shape[2] or im.resized_width > shape[3]:
        raise ItemError(
            f"{INFO_JSON} gives {im.stem!r} a valid size of {im.resized_height}x{im.resized_width}, larger than "
            f"the bins' {shape[2]}x{shape[3]}"
        )
    sizes_path = info_dir / im.sizes_bin
    try:
        images = read_array(info_dir / im.bin, dtype, shape)
        sizes = read_array(sizes_path, "int64", (1, 2))
    except MissingFileError as exc:  # a missing bin is one bad item, like a truncated one
        raise ItemError(str(exc)) from exc
    if (int(sizes[0, 0]), int(sizes[0, 1])) != (im.resized_height, im.resized_width):
        raise ItemError(
            f"{str(sizes_path)!r} says {int(sizes[0, 0])}x{int(sizes[0, 1])} but {INFO_JSON} says "
            f"{im.resized_height}x{im.resized_width}"
        )
    return images, sizes.astype(np.int64)


@dataclass
class BinRunSummary(StageSummary):
    """What :func:`run_bins` did (times in seconds).

    ``num_images`` counts images run and written in this call, ``num_resumed`` those skipped
    because their outputs were already complete (``resume``), ``failed`` the bad input bins
    (bin name, reason) that were not run.

    Attributes:
        read_s, write_s: total seconds reading input bins and writing output bins.
    """

    read_s: float = 0.0
    write_s: float = 0.0

    def format(self) -> str:
        """One line: images, seconds, images/s and per-image times."""
        return (
            f"{self.counts('skipped')} in {self.wall_s:.1f} s, "
            f"{self.images_per_s:.2f} images/s; model {self.model_ms_per_image():.1f} ms/image (median), "
            f"reading {self.ms_per_image(self.read_s):.1f} ms/image, writing {self.ms_per_image(self.write_s):.1f} ms/image"
            f"{self.executor_clause()}"
        )


def write_outputs(
    folder: Path, stem: str, out: dict[str, np.ndarray], i: int, specs: Sequence[OutputSpec], index_base: int
) -> None:
    """Write image ``i`` of a batch's outputs as ``<stem>_<k>.bin``, each [1, ...]."""
    for spec in specs:
        value = out[spec.name][i : i + 1]
        if list(value.shape) != list(spec.shape) or value.dtype != np.dtype(spec.dtype):
            raise BackendError(
                f"output {spec.name!r} of image {stem!r} is {value.dtype} {list(value.shape)}, the manifest says "
                f"{spec.dtype} {spec.shape}"
            )
        write_array(value, output_path(folder, stem, spec.index, index_base))


@dataclass
class BinRun:
    """A checked, set-up run of :func:`run_bins` (see :func:`prepare_bin_run`).

    Attributes:
        info: the bins' ``bin_info.json``; ``info_dir`` the folder its paths are relative to.
        out_dir: the raw output folder (created, ``manifest.json`` written, stale temp files removed).
        specs: per-image output layout; ``index_base`` the output file numbering.
        todo: images still to run (all of them without ``resume``), in the info file's order.
        num_resumed: images whose outputs were already complete.
        batch_size: images per model call (a static model's own, else 1).
        shape: the input bins' ``[1, 3, H, W]``.
    """

    info: BinInfo
    info_dir: Path
    out_dir: Path
    specs: list[OutputSpec]
    index_base: int
    todo: list[BinImage]
    num_resumed: int
    batch_size: int
    shape: list[int]


def prepare_bin_run(
    backend: Backend,
    bins: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    output_specs: Sequence[OutputSpec] | None = None,
    index_base: int = 0,
    resume: bool = False,
    model_name: str | None = None,
) -> BinRun:
    """Everything :func:`run_bins` does before its first model call: the bins fit the model, the
    output folder and its ``manifest.json`` (a resumed folder must hold this model's outputs of
    these bins), stale temp files removed, the images still to run. Arguments as for ``run_bins``
    (``backend`` is only asked for its ``metadata`` and ``path``).

    Raises:
        MissingFileError, InputError, OutputError: as :func:`run_bins`.
    """
    if index_base not in (0, 1):
        raise InputError(f"index base must be 0 or 1, got {index_base}")
    info_path = Path(bins)
    info = BinInfo.load(info_path)
    info_dir = info_path if info_path.is_dir() else info_path.parent
    meta = backend.metadata
    if meta is None:
        raise InputError("the .bin pipeline runs an exported model (.onnx); export it with convert_model_into_onnx.py")
    path = backend.path
    model_name = model_name or (os.fspath(path) if path is not None else "the model")
    check_bins_match_model(info, meta, model_name)
    stems = [im.stem for im in info.images]  # plain and unique: checked by BinInfo.load
    if output_specs is None:
        if path is None:
            raise InputError("pass output_specs for a backend without a model path")
        output_specs = model_output_specs(path)
    specs = list(output_specs)

    out_dir = ensure_writable_dir(output_dir)
    info_file = info_path / INFO_JSON if info_path.is_dir() else info_path
    manifest = Manifest(outputs=specs, index_base=index_base, model=model_name,
                        model_digest=file_digest(path) if path is not None else None,
                        inputs_digest=file_digest(info_file))
    if resume and not os.path.lexists(out_dir / MANIFEST) and any(n.endswith(".bin") for n in os.listdir(out_dir)):
        raise InputError(
            f"cannot --resume in {str(out_dir)!r}: it holds output bins but no {MANIFEST}, which tester.py --bins "
            "writes before its first output, so they were not written by it; run without --resume or use a new --output"
        )
    if resume and os.path.lexists(out_dir / MANIFEST):
        old = Manifest.load(out_dir)
        if old.inputs_digest is None or (old.model_digest is None and manifest.model_digest is not None):
            raise InputError(
                f"cannot --resume in {str(out_dir)!r}: its {MANIFEST} does not say which model and bins its outputs "
                "came from (no model_digest / inputs_digest: not written by tester.py --bins); resuming could mix "
                "two runs' outputs. Run without --resume or use a new --output"
            )
        if old.outputs != manifest.outputs or old.index_base != manifest.index_base:
            raise InputError(
                f"{str(out_dir / MANIFEST)!r} was written for other outputs or index base {old.index_base}; "
                f"resume with the same model and --index-base {old.index_base}, or use a new --output"
            )
        changed = [what for what, a, b in (("model file", old.model_digest, manifest.model_digest),
                                            ("bins (bin_info.json)", old.inputs_digest, manifest.inputs_digest))
                   if a is not None and b is not None and a != b]
        if changed:
            raise InputError(
                f"cannot --resume in {str(out_dir)!r}: its outputs came from another {' and '.join(changed)}; "
                "resuming would mix two runs' outputs. Use a new --output or run without --resume"
            )
    manifest.save(out_dir)
    names = {output_path(out_dir, s, spec.index, index_base).name for s in stems for spec in specs} | {MANIFEST}
    stale = remove_stale_temp_files(out_dir, names.__contains__)
    if stale:
        logger.info("Removed %d temporary file(s) left by an interrupted run in %s", stale, out_dir)

    todo = [im for im in info.images if not (resume and outputs_complete(out_dir, im.stem, specs, index_base))]
    resumed = len(info.images) - len(todo)
    if resumed:
        logger.info("Resuming: %d of %d image(s) already have all their outputs", resumed, len(info.images))
    return BinRun(
        info=info, info_dir=info_dir, out_dir=out_dir, specs=specs, index_base=index_base, todo=todo,
        num_resumed=resumed, batch_size=1 if meta.dynamic or not meta.batch_size else int(meta.batch_size),
        shape=[int(v) for v in info.shape],
    )


@dataclass(frozen=True)
class BinsJob(Job):
    """Running one model call's bins (a :class:`~centermask2.engine.executors.Job`): ``prepare``
    reads the input bins, ``infer`` runs the model, ``finish`` writes the output bins. Paths are
    absolute (a Ray worker has another working directory).

    Attributes:
        info_dir: the folder ``bin_info.json``'s paths are relative to; out_dir: the raw output folder.
        dtype, shape: the input bins' dtype and ``[1, 3, H, W]``.
        specs: per-image output layout; index_base: the output file numbering.
    """

    info_dir: str
    out_dir: str
    dtype: str
    shape: tuple[int, ...]
    specs: tuple[OutputSpec, ...]
    index_base: int

    def prepare(self, images: Sequence[BinImage]) -> dict[str, Any]:
        arrays, good, failed = [], [], []
        for im in images:
            try:
                arrays.append(load_inputs(Path(self.info_dir), im, self.dtype, self.shape))
                good.append(im)
            except ItemError as exc:
                failed.append((im.bin, str(exc)))
        if not good:
            return {"good": good, "failed": failed, "inputs": None}
        return {"good": good, "failed": failed, "inputs": {"images": np.concatenate([a for a, _ in arrays]),
                                                           "image_sizes": np.concatenate([s for _, s in arrays])}}

    def infer(self, backend: Backend, prepared: dict[str, Any]) -> dict[str, Any]:
        outputs = backend.run(prepared["inputs"]) if prepared["inputs"] is not None else None
        return {**prepared, "inputs": None, "outputs": outputs}

    def finish(self, images: Sequence[BinImage], inferred: dict[str, Any]) -> tuple[int, list[tuple[str, str]]]:
        """Returns (images written, ``(bin, reason)`` of the bad ones)."""
        for i, im in enumerate(inferred["good"]):
            write_outputs(Path(self.out_dir), im.stem, inferred["outputs"], i, self.specs, self.index_base)
        return len(inferred["good"]), inferred["failed"]


@output_session()
def run_bins(
    source: ModelSource,
    bins: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    executor: Executor | None = None,
    output_specs: Sequence[OutputSpec] | None = None,
    index_base: int = 0,
    resume: bool = False,
    progress: bool = True,
    model_name: str | None = None,
) -> BinRunSummary:
    """Run every bin listed in ``bins`` through ``source``'s model and write the raw outputs.

    The stage: its plan (:func:`prepare_bin_run`: checks, manifest, the images still to do, in
    model calls of the model's batch size), :class:`BinsJob` on each call through ``executor``,
    and the reduction (the summary, failures in the info file's order, every output visible here).

    Args:
        source: an exported model (:func:`~centermask2.engine.sources.open_model`); ``run`` takes
            ``images`` [B, 3, H, W] and ``image_sizes`` [B, 2] int64, its ``metadata`` gives batch
            size, input dtype and size.
        bins: the ``BINS`` folder of stage 1, or its ``bin_info.json``.
        output_dir: ``RAW`` folder (created); gets ``<stem>_<k + index_base>.bin`` per output
            and ``manifest.json``.
        executor: where the calls run (default: this process); folders must be shared by its workers.
        output_specs: per-image output layout; default
            :func:`~centermask2.contract.model_output_specs` of the model's file.
        index_base: 0 (ais_bench) or 1 (older benchmark tools) for the output file suffix.
        resume: skip images whose every output bin already exists with the right size.
        progress: tqdm progress bar.
        model_name: recorded in the manifest (default the model's path).

    Returns:
        a :class:`BinRunSummary`; ``failed`` lists bad input bins (the others were run).

    Raises:
        MissingFileError: no ``bin_info.json``.
        InputError: the bins do not fit the model, or ``resume`` into a folder written with another layout.
        OutputError: ``output_dir`` is not writable, or outputs written elsewhere are not visible here
            (a folder the executor's workers do not share).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    executor = executor or LocalExecutor()
    run = prepare_bin_run(source.backend, bins, output_dir, output_specs=output_specs, index_base=index_base,
                          resume=resume, model_name=model_name)
    job = BinsJob(os.path.abspath(run.info_dir), os.path.abspath(run.out_dir), run.info.dtype, tuple(run.shape),
                  tuple(run.specs), run.index_base)
    groups = [run.todo[k : k + run.batch_size] for k in range(0, len(run.todo), run.batch_size)]
    summary = BinRunSummary(num_resumed=run.num_resumed)
    workers: set[int] = set()
    with tqdm(total=len(run.todo), unit="img", disable=not progress, desc="model") as bar:
        for item in executor.map(job, groups, source):
            written, failed = item.value
            if not summary.first_result_s:
                summary.first_result_s = time.perf_counter() - start
            summary.failed.extend(failed)
            summary.read_s += item.prepare_s
            summary.write_s += item.finish_s
            if written:
                workers.add(item.worker)
                summary.num_images += written
                summary.model_s.append(item.model_s)
                summary.batch_sizes.append(written)
            bar.update(written + len(failed))
    order = {im.bin: k for k, im in enumerate(run.info.images)}
    summary.failed.sort(key=lambda failure: order.get(failure[0], len(order)))  # the info file's order
    for name, reason in summary.failed:
        logger.warning("Skipping %s: %s", name, reason)
    bad = {name for name, _ in summary.failed}
    unseen = [im.stem for im in run.todo
              if im.bin not in bad and not outputs_complete(run.out_dir, im.stem, run.specs, run.index_base)]
    if unseen:
        raise OutputError(
            f"the outputs of {len(unseen)} image(s) (e.g. {unseen[0]!r}) are not in {str(run.out_dir)!r} here: "
            "--output must be a folder every worker shares at the same path"
        )
    summary.wall_s = time.perf_counter() - start
    summary.executor = executor.describe(workers)
    return summary
