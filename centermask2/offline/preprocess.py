"""Stage 1 of the offline pipeline: images -> ``.bin`` network inputs (layout: :mod:`.layout`).

Every image goes through exactly the reference path of :mod:`centermask2.data.transforms`
(:func:`~centermask2.data.transforms.load_and_resize`: PIL decode, EXIF orientation, BGR,
ResizeShortestEdge; :func:`~centermask2.data.transforms.pad_batch`: zero padding at the
bottom/right to the static size) and is written as raw pixels, since exported graphs normalize inside:

* ``BINS/<stem>.bin``: ``[1, 3, H, W]`` in the model's input dtype (``float32`` bins hold the
  same integer pixel values as the ``uint8`` ones);
* ``BINS/image_sizes/<stem>.bin``: int64 ``[1, 2]``, the valid (h, w);
* ``BINS/bin_info.json`` and ``BINS/bin_info.info`` (:class:`~.layout.BinInfo`), written
  last, listing exactly the images that succeeded, in input order.

Bins are written atomically, so an interrupted run leaves only complete bins (and possibly
temp files, which the next run removes); ``resume=True`` keeps every bin pair that has the right
byte sizes and matches the image's size, and redoes the rest. The files a resumed run ends with
are byte-identical to those of an uninterrupted run. An executor's workers (processes, Ray tasks)
each read, resize and write whole images; results are collected by input index, so the output
does not depend on the executor, the number of workers or on scheduling.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import INPUT_DTYPES, expected_nbytes, read_metadata
from ..data.catalog import ImageRecord
from ..data.spec import InputSpec
from ..data.transforms import get_resize_shape, image_size, load_and_resize, pad_batch
from ..engine.executors import Executor, Job, LocalExecutor
from ..errors import CenterMask2Error, InputError, OutputError
from ..fileio import (
    atomic_write_json,
    check_choice,
    check_int,
    check_keys,
    ensure_writable_dir,
    output_session,
    read_json,
    remove_stale_temp_files,
    text_digest,
)
from ..summary import StageSummary
from .layout import INFO_JSON, INFO_TXT, SETTINGS_JSON, SIZES_DIR, BinImage, BinInfo, read_array, write_array

__all__ = [
    "BIN_DTYPES",
    "PreprocessSpec",
    "PreprocessSummary",
    "spec_from_model",
    "spec_from_config",
    "bin_stems",
    "prepare_output_dir",
    "run_settings",
    "read_settings",
    "preprocess_image",
    "preprocess_to_bins",
    "PreprocessJob",
    "JobResult",
    "run_job",
    "bin_paths",
]

logger = logging.getLogger(__name__)

#: dtypes an images bin can have (those exported models accept).
BIN_DTYPES = INPUT_DTYPES

_SIZES_SHAPE = (1, 2)
_SIZES_DTYPE = "int64"


@dataclass(frozen=True)
class PreprocessSpec:
    """How images become ``.bin`` inputs.

    Attributes:
        input: resize rule, channel order and the static size (``input.pad_to``, required).
        dtype: ``"uint8"`` or ``"float32"``, the model's ``images`` input dtype.
        model: the ``.onnx`` the bins are made for (recorded in ``bin_info.json``), or None.
    """

    input: InputSpec
    dtype: str = "uint8"
    model: str | None = None

    def __post_init__(self) -> None:
        if self.input.pad_to is None:
            raise InputError("a .bin pipeline needs a fixed input size (InputSpec.pad_to), e.g. 1344x1344")
        if self.dtype not in BIN_DTYPES:
            raise InputError(f"unsupported bin dtype {self.dtype!r}; use one of {', '.join(BIN_DTYPES)}")

    @property
    def shape(self) -> list[int]:
        """``[1, 3, H, W]`` of every images bin."""
        h, w = self.input.pad_to  # type: ignore[misc]
        return [1, 3, int(h), int(w)]

    @property
    def nbytes(self) -> int:
        """Bytes of one images bin."""
        return expected_nbytes(self.shape, self.dtype)

    @property
    def bytes_per_image(self) -> int:
        """Bytes written per image: the images bin plus the image_sizes bin."""
        return self.nbytes + expected_nbytes(_SIZES_SHAPE, _SIZES_DTYPE)


@dataclass
class PreprocessSummary(StageSummary):
    """What :func:`preprocess_to_bins` did.

    ``num_images`` counts images written in this run, ``num_resumed`` those kept from an earlier
    run (``resume=True``), ``failed`` the images that could not be preprocessed.

    Attributes:
        info: what was saved as ``bin_info.json`` (successful images, input order); None until then.
        bytes_per_image: bytes of one images bin plus its image_sizes bin.
    """

    info: BinInfo | None = None
    bytes_per_image: int = 0

    def format(self) -> str:
        """A one-paragraph report, followed by one line per failed image."""
        assert self.info is not None
        lines = [
            f"{self.num_images} image(s) written, {self.num_resumed} skipped (already done), {len(self.failed)} failed "
            f"in {self.wall_s:.1f} s ({self.images_per_s:.1f} images/s); {self.bytes_per_image:,} bytes per image "
            f"({self.info.dtype} {self.info.shape} + image_sizes int64 [1, 2])"
        ]
        if self.failed:
            lines.append(f"{len(self.failed)} image(s) failed and are not in {INFO_JSON}:")
            lines.append(self.format_failures(limit=len(self.failed)))
        return "\n".join(lines)


def spec_from_model(
    model: str | os.PathLike, input_size: tuple[int, int] | None = None, input_dtype: str | None = None
) -> PreprocessSpec:
    """The preprocessing an exported model expects, from its metadata.

    Args:
        model: ``.onnx`` exported by this toolkit.
        input_size: (H, W) to pad to. Required for a dynamic model; for a static model it must
            equal the model's size (or be None).
        input_dtype: must equal the model's input dtype (or be None).

    Raises:
        MissingFileError, InputError: no such model, not ours, or the arguments contradict it.
    """
    meta = read_metadata(model)
    name = os.fspath(model)
    if meta.dynamic:
        if input_size is None:
            raise InputError(
                f"{name!r} is a dynamic model, but .bin inputs have one fixed size: export a static model "
                "(convert_model_into_onnx.py --input-size HxW, without --dynamic) or pass --input-size HxW "
                "to choose the size every image is padded to"
            )
        size = input_size
    else:
        size = meta.input_size  # type: ignore[assignment]
        if input_size is not None and tuple(input_size) != tuple(size):
            raise InputError(
                f"--input-size {input_size[0]}x{input_size[1]} contradicts the static model {name!r}, whose input "
                f"is {size[0]}x{size[1]}; leave --input-size out or export the model at that size"
            )
        if meta.batch_size not in (None, 1):
            raise InputError(
                f"{name!r} is a static model with batch size {meta.batch_size}, but bins hold one image each "
                "([1, 3, H, W]); export it with --batch-size 1"
            )
    if input_dtype is not None and input_dtype != meta.input_dtype:
        raise InputError(
            f"--input-dtype {input_dtype} contradicts {name!r}, whose images input is {meta.input_dtype}; "
            "leave --input-dtype out (the model's is used)"
        )
    spec = InputSpec.from_metadata(meta, pad_to=(int(size[0]), int(size[1])))
    return PreprocessSpec(input=spec, dtype=meta.input_dtype, model=name)


def spec_from_config(
    config_file: str | os.PathLike,
    input_size: tuple[int, int],
    input_dtype: str = "uint8",
    opts: Sequence[str] = (),
) -> PreprocessSpec:
    """The preprocessing of a config's model padded to ``input_size``, without an exported model.

    The size divisibility comes from the config's backbone (built on the ``meta`` device: no
    weights, no memory).

    Raises:
        MissingFileError: no such config.
        InputError: unknown config key (:class:`~centermask2.config.UnknownConfigKeyError`), bad
            dtype, or ``input_size`` not a multiple of the size divisibility.
    """
    from ..config import load_config

    if input_dtype not in BIN_DTYPES:
        raise InputError(f"unsupported --input-dtype {input_dtype!r}; use one of {', '.join(BIN_DTYPES)}")
    cfg = load_config(config_file, list(opts))
    spec = InputSpec.from_config(cfg, pad_to=(int(input_size[0]), int(input_size[1])))
    return PreprocessSpec(input=spec, dtype=input_dtype, model=None)


def bin_stems(records: Sequence[ImageRecord]) -> list[str]:
    """The bin name (without ``.bin``) of every image: its file-name stem.

    Raises:
        InputError: two images share a stem (e.g. ``a/x.jpg`` and ``b/x.jpg``, or ``x.jpg`` and
            ``x.png``), or a stem contains whitespace (it would break ``bin_info.info``'s
            ``<index> <path> <W> <H>`` lines); the message names them.
    """
    stems = [Path(r.file_name).stem for r in records]
    spaced = [r.file_name for r, stem in zip(records, stems) if any(c.isspace() for c in stem)]
    if spaced:
        raise InputError(
            f"{len(spaced)} image name(s) contain whitespace, which bin_info.info's '<index> <path> <W> <H>' lines "
            f"cannot hold: {', '.join(repr(n) for n in spaced[:10])}{' ...' if len(spaced) > 10 else ''}; rename them"
        )
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for rec, stem in zip(records, stems):
        if stem in seen:
            clashes.append(f"{seen[stem]!r} and {rec.file_name!r} -> {stem}.bin")
        else:
            seen[stem] = rec.file_name
    if clashes:
        raise InputError(
            f"{len(clashes)} image(s) would share a bin name (bins are named after the file stem): "
            f"{'; '.join(clashes[:10])}{' ...' if len(clashes) > 10 else ''}. Rename them or preprocess the "
            "folders separately"
        )
    return stems


def run_settings(spec: PreprocessSpec, records: Sequence[ImageRecord] | None = None) -> dict[str, Any]:
    """What a preprocessing run's bins depend on, as recorded in ``BINS/bin_settings.json``."""
    settings: dict[str, Any] = {
        "dtype": spec.dtype,
        "shape": spec.shape,
        "input_format": spec.input.input_format,
        "min_size": spec.input.min_size,
        "max_size": spec.input.max_size,
    }
    if records is not None:
        settings["images"] = text_digest(json.dumps([[r.image_id, r.file_name] for r in records]))
    return settings


def prepare_output_dir(
    folder: str | os.PathLike,
    spec: PreprocessSpec | None = None,
    resume: bool = False,
    records: Sequence[ImageRecord] | None = None,
) -> Path:
    """Create ``folder`` (and its ``image_sizes``) and check that files can be written there.

    With ``resume``, the settings an earlier run recorded when it started (``bin_settings.json``,
    else the ``bin_info.json`` of a finished run) must equal this run's: input rules, dtype, size
    and, when ``records`` is given, the image list.

    Raises:
        OutputError: ``folder`` exists and is a file, or cannot be created or written to.
        InputError: resuming over bins made with other settings; the message says which differ.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {str(path)!r} exists and is not a folder; choose another --output")
    ensure_writable_dir(path)
    ensure_writable_dir(path / SIZES_DIR)
    if not (resume and spec is not None):
        return path
    mine = run_settings(spec, records)
    theirs: dict[str, Any] | None = None
    if os.path.lexists(path / SETTINGS_JSON):
        theirs = read_settings(path / SETTINGS_JSON)
    elif os.path.lexists(path / INFO_JSON):
        old = BinInfo.load(path / INFO_JSON)
        theirs = {"dtype": old.dtype, "shape": list(old.shape), "input_format": old.input_format,
                  "min_size": old.min_size, "max_size": old.max_size}
    elif any(name.endswith(".bin") for folder_ in (path, path / SIZES_DIR) for name in os.listdir(folder_)):
        # bins without the settings a run records when it starts: not bins of this toolkit's run
        raise InputError(
            f"cannot --resume in {str(path)!r}: it holds bins but has no {SETTINGS_JSON}, which every run of "
            "preprocess_inputs_to_bin.py writes when it starts, so they were not written by one; run without "
            "--resume (the folder's bins are replaced) or use another --output"
        )
    if theirs is not None:
        changed = sorted(k for k in mine if k in theirs and theirs[k] != mine[k])
        if changed:
            detail = "; ".join(f"{k}: {theirs[k]!r} then, {mine[k]!r} now" for k in changed if k != "images")
            detail += "; the image list differs" if "images" in changed else ""
            raise InputError(
                f"cannot --resume in {str(path)!r}: its bins were made with other settings ({detail.strip('; ')}); "
                "use another --output or run without --resume"
            )
    return path


#: the largest bin_settings.json a run writes (a few hundred bytes)
_MAX_SETTINGS_BYTES = 1 << 20


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The ``bin_settings.json`` an earlier run wrote (read back on ``--resume``), validated.

    Raises:
        InputError: not a settings file this toolkit writes (a link, wrong keys or types).
    """
    where = repr(os.fspath(path))
    hint = "delete it (and run without --resume) or use another --output"
    data = read_json(path, "bin settings file", dict, hint, max_bytes=_MAX_SETTINGS_BYTES, follow_links=False)
    check_keys(data, where, {"dtype", "shape", "input_format", "min_size", "max_size"}, {"images"})
    check_choice(data["dtype"], "'dtype'", where, BIN_DTYPES)
    shape = data["shape"]
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(v) is int and v > 0 for v in shape)):
        raise InputError(f"{where}: 'shape' must be a list of 4 positive integers, got {shape!r:.80}; {hint}")
    check_choice(data["input_format"], "'input_format'", where, ("BGR", "RGB"))
    for key in ("min_size", "max_size"):
        check_int(data[key], repr(key), where, minimum=0)
    if not isinstance(data.get("images", ""), str):
        raise InputError(f"{where}: 'images' must be a digest (text), got {data['images']!r:.80}; {hint}")
    return data


def preprocess_image(
    path: str | os.PathLike, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """One image as the bins hold it (the reference path of :mod:`centermask2.engine.loop`).

    Returns:
        images np.ndarray[1, 3, H, W] in ``spec.dtype`` (raw pixels, zeros outside the image),
        image_sizes np.ndarray[1, 2] int64 (valid h, w), and the original (h, w).

    Raises:
        MissingFileError, ItemError: unreadable image, or its resized size does not fit.
    """
    resized, original = load_and_resize(path, spec.input)
    images, sizes = pad_batch([resized], spec.input)
    if spec.dtype != "uint8":
        images = images.astype(spec.dtype)
    return images, sizes, original


@dataclass(frozen=True)
class PreprocessJob:
    """One image to preprocess (picklable: sent to pool workers or cluster tasks)."""

    index: int
    path: str
    stem: str
    folder: str
    spec: PreprocessSpec
    resume: bool


@dataclass(frozen=True)
class JobResult:
    """What a worker did with one image; sizes are (h, w), None when it failed."""

    index: int
    status: str  # "written", "skipped" or "failed"
    original: tuple[int, int] | None = None
    resized: tuple[int, int] | None = None
    error: str | None = None


def bin_paths(folder: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """An image's two bins in ``folder``: ``<stem>.bin`` and ``image_sizes/<stem>.bin``."""
    return Path(folder) / f"{stem}.bin", Path(folder) / SIZES_DIR / f"{stem}.bin"


def _reusable(job: PreprocessJob) -> JobResult | None:
    """The result of an earlier run for ``job`` when its bins are complete and consistent."""
    images_bin, sizes_bin = bin_paths(job.folder, job.stem)
    try:
        if images_bin.stat().st_size != job.spec.nbytes:
            return None
        sizes = read_array(sizes_bin, _SIZES_DTYPE, _SIZES_SHAPE)
        original = image_size(job.path)
    except (OSError, CenterMask2Error):
        return None
    resized = (int(sizes[0, 0]), int(sizes[0, 1]))
    if get_resize_shape(*original, job.spec.input.min_size, job.spec.input.max_size) != resized:
        logger.debug("redoing %s: its image_sizes bin %s does not match the image", job.stem, resized)
        return None
    return JobResult(job.index, "skipped", original, resized)


class _Preprocess(Job):
    """:func:`run_job` as an executor's job (no model: all of it in ``prepare``)."""

    def prepare(self, item: PreprocessJob) -> JobResult:
        return run_job(item)


def run_job(job: PreprocessJob) -> JobResult:
    """Preprocess one image and write its two bins; never raises for a bad image (an executor's
    unit of work)."""
    if job.resume:
        done = _reusable(job)
        if done is not None:
            return done
    try:
        images, sizes, original = preprocess_image(job.path, job.spec)
        images_bin, sizes_bin = bin_paths(job.folder, job.stem)
        # images first: a resumed run trusts a pair only if both are complete, and the sizes bin
        # (written last) must also agree with the image
        write_array(images, images_bin)
        write_array(sizes, sizes_bin)
    except (CenterMask2Error, OSError) as exc:  # one bad image must not stop the others; a bug does
        return JobResult(job.index, "failed", error=str(exc))
    return JobResult(job.index, "written", original, (int(sizes[0, 0]), int(sizes[0, 1])))


def _remove_leftovers(folder: Path) -> None:
    """Delete temp files an interrupted run left behind, and the info files of any earlier run."""
    for d in (folder, folder / SIZES_DIR):
        remove_stale_temp_files(d, lambda name: name.endswith(".bin") or name in (INFO_JSON, INFO_TXT, SETTINGS_JSON))
    for name in (INFO_JSON, INFO_TXT):
        # rewritten at the end; until then the folder must not claim to be complete
        (folder / name).unlink(missing_ok=True)


@output_session()
def preprocess_to_bins(
    records: Sequence[ImageRecord],
    output_dir: str | os.PathLike,
    spec: PreprocessSpec,
    *,
    executor: Executor | None = None,
    resume: bool = False,
    progress: bool = True,
) -> PreprocessSummary:
    """Write the bins of ``records`` and the info files into ``output_dir``.

    Args:
        records: images in input order (see :func:`~centermask2.data.catalog.list_images`).
        output_dir: the ``BINS`` folder (created if missing).
        spec: see :func:`spec_from_model` / :func:`spec_from_config`.
        executor: where the images are done (default: this process; a
            :class:`~centermask2.engine.executors.PoolExecutor` of processes, or a Ray cluster whose
            tasks write into ``output_dir`` on a shared filesystem).
        resume: keep bins of an earlier (interrupted) run that have the right byte sizes and
            match their image; redo the others.
        progress: show a tqdm progress bar.

    Returns:
        The summary; ``summary.info`` is what ``bin_info.json`` holds. Images that fail are listed
        in ``summary.failed`` (and their stale bins, if any, removed); the others are still done.

    Raises:
        InputError: two images share a stem, or resuming over other settings (all before any image
            is touched).
        OutputError: ``output_dir`` is not a writable folder, or bins written elsewhere are not
            visible here (a folder the executor's workers do not share).
    """
    from tqdm import tqdm

    executor = executor or LocalExecutor()
    stems = bin_stems(records)
    folder = prepare_output_dir(output_dir, spec, resume, records)
    _remove_leftovers(folder)
    # recorded first, so that a resumed run can check it continues the same preprocessing
    atomic_write_json(run_settings(spec, records), folder / SETTINGS_JSON, indent=1)
    pad_h, pad_w = spec.input.pad_to  # type: ignore[misc]
    if min(pad_h, pad_w) < spec.input.max_size:
        logger.warning(
            "input size %dx%d is smaller than MAX_SIZE_TEST=%d: images whose resized size exceeds it will fail",
            pad_h, pad_w, spec.input.max_size,
        )
    jobs = [PreprocessJob(i, os.path.abspath(r.path), s, os.path.abspath(folder), spec, resume)
            for i, (r, s) in enumerate(zip(records, stems))]
    results: list[JobResult | None] = [None] * len(jobs)
    logger.info("Preprocessing %d image(s) into %s (%s %s, %s%s)", len(jobs), folder, spec.dtype, spec.shape,
                executor.describe(set()) or "this process", ", resuming" if resume else "")

    start = time.perf_counter()
    workers: set[int] = set()
    with tqdm(total=len(jobs), unit="img", desc="preprocess", disable=not progress) as bar:
        for item in executor.map(_Preprocess(), jobs):
            result: JobResult = item.value
            if result.status == "written" and not bin_paths(folder, jobs[result.index].stem)[1].is_file():
                raise OutputError(
                    f"the bins of {jobs[result.index].stem!r} were written elsewhere but are not in {str(folder)!r} "
                    "here: --output must be a folder every worker shares at the same path"
                )
            results[result.index] = result
            workers.add(item.worker)
            bar.update(1)
    wall = time.perf_counter() - start

    info = BinInfo(
        dtype=spec.dtype,
        shape=spec.shape,
        input_format=spec.input.input_format,
        min_size=spec.input.min_size,
        max_size=spec.input.max_size,
        model=spec.model,
    )
    summary = PreprocessSummary(info=info, wall_s=wall, bytes_per_image=spec.bytes_per_image,
                                executor=executor.describe(workers))
    for rec, job, res in zip(records, jobs, results):
        assert res is not None
        if res.status == "failed":
            summary.failed.append((rec.file_name, res.error or "unknown error"))
            for stale in bin_paths(folder, job.stem):
                stale.unlink(missing_ok=True)
            continue
        if res.status == "skipped":
            summary.num_resumed += 1
        else:
            summary.num_images += 1
        (h, w), (rh, rw) = res.original, res.resized  # type: ignore[misc]
        images_bin, sizes_bin = bin_paths(".", job.stem)
        info.images.append(
            BinImage(
                image_id=rec.image_id,
                file_name=rec.file_name,
                stem=job.stem,
                height=h,
                width=w,
                resized_height=rh,
                resized_width=rw,
                bin=images_bin.as_posix(),
                sizes_bin=sizes_bin.as_posix(),
            )
        )
    info.save(folder)
    return summary
