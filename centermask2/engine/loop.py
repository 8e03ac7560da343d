"""Run a backend over images and produce COCO results, as upstream's test loop does.

The stages are the same for every backend: read (PIL, EXIF, BGR) -> ResizeShortestEdge ->
pad into a raw-pixel batch (:mod:`centermask2.data.transforms`) -> backend ->
:func:`~centermask2.modeling.postprocessing.detector_postprocess` per image -> COCO records.
A backend is anything with ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``
(:class:`~centermask2.engine.backend.Backend`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..contract import SEM_SEG_OUTPUT, PanopticSettings, check_detections
from ..data.catalog import ImageRecord
from ..data.spec import InputSpec
from ..data.transforms import load_and_resize, pad_batch
from ..errors import BackendError, CenterMask2Error, InputError
from ..evaluation.coco import instances_to_coco_json
from ..fileio import atomic_write_json, ensure_writable_dir, output_session, text_digest
from ..modeling.postprocessing import detector_postprocess
from ..summary import StageSummary
from .executors import Executor, Job, LocalExecutor
from .resume import ImageOutput, PartialResults

if TYPE_CHECKING:
    from .backend import Backend
    from .sources import ModelSource

__all__ = [
    "RESULTS_NAME",
    "PARTIAL_NAME",
    "InferenceSummary",
    "InferJob",
    "BatchResults",
    "batches",
    "load_batch",
    "image_outputs",
    "image_results",
    "run_inference",
    "run_to_folder",
]

#: the results file of a run (the name centermask2's COCO evaluator uses)
RESULTS_NAME = "coco_instances_results.json"
#: per-image progress of a run, kept next to the results until they are written (for ``resume``)
PARTIAL_NAME = "coco_instances_results.partial.jsonl"

logger = logging.getLogger(__name__)


@dataclass
class InferenceSummary(StageSummary):
    """What :func:`run_inference` did; ``failed`` lists unreadable images and why.

    Attributes:
        num_detections: COCO records produced in this run.
        preprocess_s, postprocess_s: seconds per batch for reading + resizing + padding, and for
            post-processing + COCO conversion (+ panoptic segments and their PNGs).
        panoptic: a panoptic model's annotation per image, in image order (its results file's content).
    """

    num_detections: int = 0
    preprocess_s: list[float] = field(default_factory=list)
    postprocess_s: list[float] = field(default_factory=list)
    panoptic: list[dict[str, Any]] = field(default_factory=list)

    def format(self) -> str:
        n = max(self.num_images, 1)
        failed = f" ({len(self.failed)} unreadable, skipped)" if self.failed else ""
        return (
            f"{self.num_images} images{failed}, {self.num_detections} detections in {self.wall_s:.1f} s "
            f"({self.images_per_s:.2f} img/s). Per image: model median {self.model_ms_per_image():.1f} ms, "
            f"mean {1000 * sum(self.model_s) / n:.1f} ms; pre-processing {self.ms_per_image(sum(self.preprocess_s)):.1f} "
            f"ms; post-processing {self.ms_per_image(sum(self.postprocess_s)):.1f} ms{self.rate_clause()}"
            f"{self.executor_clause()}"
        )


def batches(items: Sequence[ImageRecord], size: int) -> Iterable[Sequence[ImageRecord]]:
    """``items`` in consecutive groups of ``size`` (the last one shorter): the backend calls of a run."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def load_batch(
    batch: Sequence[ImageRecord], spec: InputSpec
) -> tuple[list[tuple[np.ndarray, tuple[int, int]]], list[ImageRecord], list[tuple[str, str]]]:
    """Read and resize the images of one backend call.

    Returns:
        (resized image and original (h, w) of every readable image, the readable records,
        ``(file_name, reason)`` of every unreadable one).
    """
    loaded, readable, failed = [], [], []
    for rec in batch:
        try:
            loaded.append(load_and_resize(rec.path, spec))
            readable.append(rec)
        except (CenterMask2Error, OSError) as exc:  # unreadable image: name it, keep going
            failed.append((rec.file_name, str(exc)))
    return loaded, readable, failed


#: what a corrupt model's outputs call for
_CORRUPT_MODEL = ("its outputs are corrupt (a broken export or quantization?); check it against the PyTorch model "
                  "(convert_model_into_onnx.py --verify)")


def image_outputs(out: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Image ``i`` of a backend call's outputs (batch first), without the batch dimension."""
    return {name: value[i] for name, value in out.items()}


def image_results(
    out: Mapping[str, np.ndarray],
    i: int,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
    image_id: int,
    contiguous_to_dataset_id: Sequence[int],
    mask_threshold: float = 0.5,
    *,
    file_name: str = "",
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Image ``i`` of a backend call's outputs as post-processed detections and COCO records.

    Args:
        out: the backend's outputs (:data:`~centermask2.contract.OUTPUT_NAMES`), batch first.
        input_hw: the valid (h, w) the network saw; output_hw: the original image's (h, w).
        file_name: the image's, for messages.

    Returns:
        (:func:`~centermask2.modeling.postprocessing.detector_postprocess`'s result, its
        :func:`~centermask2.evaluation.coco.instances_to_coco_json` records).

    Raises:
        BackendError: the outputs fail :func:`~centermask2.contract.check_detections` (a count out of
            range, non-finite boxes, scores or masks, classes the model does not have: a broken export or
            quantization, every image would be wrong, so the run stops).
    """
    where = f"the model's outputs for image {image_id}" + (f" ({file_name})" if file_name else "")
    one = image_outputs(out, i)
    n = check_detections(one, num_classes=len(contiguous_to_dataset_id), where=where, hint=_CORRUPT_MODEL)

    def rows(name: str) -> torch.Tensor | None:
        return torch.from_numpy(np.ascontiguousarray(one[name][:n])) if name in one else None

    det = detector_postprocess(
        rows("boxes"),
        rows("scores"),
        rows("classes"),
        rows("masks"),
        rows("mask_scores"),
        input_hw=input_hw,
        output_hw=output_hw,
        mask_threshold=mask_threshold,
    )
    return det, instances_to_coco_json(det, image_id, contiguous_to_dataset_id)


def panoptic_image(
    det: Mapping[str, torch.Tensor],
    sem_seg_logits: np.ndarray,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
    settings: PanopticSettings,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """One image's panoptic segments, as detectron2's ``PanopticFPN`` at inference.

    Args:
        det: :func:`~centermask2.modeling.postprocessing.detector_postprocess`'s detections.
        sem_seg_logits: np.ndarray[C, H', W'] float32, the image's ``sem_seg`` output (stride
            ``settings.common_stride`` of the padded input).
        input_hw: the valid (h, w) the network saw; output_hw: the original image's (h, w).

    Returns:
        (panoptic_seg int32 [H, W] segment ids (0 void), segments_info with contiguous ids,
        semantic labels uint8 [H, W]).

    Raises:
        BackendError: non-finite semantic logits (a broken export or quantization).
    """
    from ..modeling.panoptic import combine_semantic_and_instance_outputs, sem_seg_argmax

    logits = torch.from_numpy(np.ascontiguousarray(sem_seg_logits))
    if not torch.isfinite(logits).all():  # callers check first (check_detections); kept for direct use
        raise BackendError(f"the model returned NaN or infinite semantic logits: {_CORRUPT_MODEL}")
    labels = sem_seg_argmax(logits, input_hw, output_hw, settings.size_divisibility, settings.common_stride)
    seg, segments = combine_semantic_and_instance_outputs(
        det, labels, overlap_thresh=settings.overlap_thresh, stuff_area_thresh=settings.stuff_area_limit,
        instances_score_thresh=settings.instances_confidence_thresh,
    )
    return seg.numpy(), segments, labels.numpy().astype(np.uint8)


@dataclass
class BatchResults:
    """What :class:`InferJob` made of one backend call: each readable image's output (input
    order), ``(file_name, reason)`` per unreadable one, and the detections when asked for."""

    images: list[tuple[ImageRecord, ImageOutput]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    num_detections: int = 0
    detections: list[dict[str, torch.Tensor]] = field(default_factory=list)


@dataclass(frozen=True)
class InferJob(Job):
    """Image inference on one backend call's images (a :class:`~centermask2.engine.executors.Job`).

    ``prepare`` reads, resizes and pads the batch; ``infer`` runs the model; ``finish``
    post-processes each image to COCO records.

    Attributes:
        spec: resize / padding rules.
        category_ids: dataset category id of every contiguous class.
        mask_threshold: binarization threshold of pasted masks (0.5 upstream).
        keep_detections: also return each image's post-processed detections (for drawing).
        panoptic: a panoptic model's settings: ``finish`` also makes each image's panoptic segments
            and writes their PNGs into ``output_dir`` (:func:`~centermask2.evaluation.panoptic.write_panoptic_image`).
        output_dir: the run's output folder (absolute; panoptic models only).
    """

    spec: InputSpec
    category_ids: tuple[int, ...]
    mask_threshold: float = 0.5
    keep_detections: bool = False
    panoptic: PanopticSettings | None = None
    output_dir: str | None = None

    def prepare(self, batch: Sequence[ImageRecord]) -> dict[str, Any]:
        loaded, readable, failed = load_batch(batch, self.spec)
        images = sizes = None
        if readable:
            images, sizes = pad_batch([im for im, _ in loaded], self.spec)
        return {"images": images, "image_sizes": sizes, "originals": [hw for _, hw in loaded], "failed": failed,
                "records": readable}

    def infer(self, backend: Backend, prepared: dict[str, Any]) -> dict[str, Any]:
        outputs = None
        if prepared["images"] is not None:
            outputs = backend.run({"images": prepared["images"], "image_sizes": prepared["image_sizes"]})
        return {**prepared, "images": None, "outputs": outputs}

    def finish(self, batch: Sequence[ImageRecord], inferred: dict[str, Any]) -> BatchResults:
        result = BatchResults(failed=inferred["failed"])
        sizes = inferred["image_sizes"]
        for i, (rec, original) in enumerate(zip(inferred["records"], inferred["originals"])):
            input_hw = (int(sizes[i, 0]), int(sizes[i, 1]))
            det, records = image_results(inferred["outputs"], i, input_hw, original, rec.image_id, self.category_ids,
                                         self.mask_threshold, file_name=rec.file_name)
            output = ImageOutput(records)
            if self.panoptic is not None:
                from ..evaluation.panoptic import write_panoptic_image

                seg, segments, labels = panoptic_image(det, inferred["outputs"][SEM_SEG_OUTPUT][i], input_hw, original,
                                                       self.panoptic)
                output.panoptic = write_panoptic_image(self.output_dir or ".", rec.image_id, rec.file_name, seg,
                                                       segments, labels)
            result.images.append((rec, output))
            result.num_detections += int(det["boxes"].shape[0])
            if self.keep_detections:
                result.detections.append(det)
        return result


def run_inference(
    source: ModelSource,
    records: Sequence[ImageRecord],
    contiguous_to_dataset_id: Sequence[int] | None = None,
    *,
    executor: Executor | None = None,
    mask_threshold: float = 0.5,
    progress: bool = True,
    on_image: Callable[[ImageRecord, dict[str, torch.Tensor]], None] | None = None,
    done: Mapping[int, ImageOutput] | None = None,
    on_results: Callable[[ImageRecord, ImageOutput], None] | None = None,
    output_dir: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], InferenceSummary]:
    """Run ``source``'s model over ``records`` and build COCO result records.

    The stage: its plan (the images not in ``done``, in backend calls of ``source.batch_size``),
    :class:`InferJob` on each call through ``executor``, and the reduction (records in input order,
    failures in input order, the summary), whatever the executor.

    Args:
        source: the model and how to feed it (:func:`~centermask2.engine.sources.open_model`).
        records: images (see :func:`~centermask2.data.catalog.list_images`).
        contiguous_to_dataset_id: category id of every contiguous class (default ``source.category_ids``).
        executor: where the calls run (default: this process, :class:`LocalExecutor`).
        mask_threshold: binarization threshold of pasted masks (0.5 upstream).
        progress: show a tqdm progress bar.
        on_image: optional callback with each image's post-processed detections.
        done: outputs of images already processed (by image id, e.g. from
            :class:`~centermask2.engine.resume.PartialResults`); those images are not run again.
        on_results: optional callback with each newly processed image's output, as they arrive.
        output_dir: where a panoptic model's PNGs go (required for one; see :func:`run_to_folder`).

    Returns:
        (COCO result dicts in image order, timing summary); for a panoptic model the summary's
        ``panoptic`` holds each image's panoptic annotation, in image order.
    """
    from tqdm import tqdm

    if source.batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {source.batch_size}")
    ids = tuple(int(c) for c in (contiguous_to_dataset_id if contiguous_to_dataset_id is not None
                                 else source.category_ids))
    executor = executor or LocalExecutor()
    summary = InferenceSummary()
    start = time.perf_counter()
    done = dict(done or {})
    todo = [r for r in records if r.image_id not in done]
    summary.num_resumed = len(records) - len(todo)
    if done:
        logger.info("Resuming: %d of %d image(s) already done", len(records) - len(todo), len(records))
    if source.panoptic is not None and output_dir is None:
        raise InputError(f"{source.label} is a panoptic model: give an output folder for its PNGs")
    job = InferJob(source.spec, ids, mask_threshold, keep_detections=on_image is not None, panoptic=source.panoptic,
                   output_dir=os.path.abspath(output_dir) if output_dir is not None else None)
    new: dict[int, ImageOutput] = {}
    workers: set[int] = set()
    with tqdm(total=len(todo), unit="img", disable=not progress, desc="inference") as bar:
        for item in executor.map(job, list(batches(todo, source.batch_size)), source):
            batch: BatchResults = item.value
            if not summary.first_result_s:
                summary.first_result_s = time.perf_counter() - start
            for name, reason in batch.failed:
                logger.warning("skipping %s: %s", name, reason)
            summary.failed.extend(batch.failed)
            for k, (rec, output) in enumerate(batch.images):
                new[rec.image_id] = output
                if on_results is not None:
                    on_results(rec, output)
                if on_image is not None:
                    on_image(rec, batch.detections[k])
            summary.num_detections += batch.num_detections
            summary.preprocess_s.append(item.prepare_s)
            summary.postprocess_s.append(item.finish_s)
            if batch.images:
                workers.add(item.worker)
                summary.model_s.append(item.model_s)
                summary.batch_sizes.append(len(batch.images))
                summary.num_images += len(batch.images)
            bar.update(len(batch.images) + len(batch.failed))
    summary.wall_s = time.perf_counter() - start
    summary.executor = executor.describe(workers)
    summary.calls_at_once = executor.calls_at_once(source)
    order = {r.file_name: i for i, r in enumerate(records)}
    summary.failed.sort(key=lambda failure: order.get(failure[0], len(order)))  # input order, whatever the executor
    results: list[dict[str, Any]] = []
    for rec in records:  # input order, resumed and new together
        output = done.get(rec.image_id) or new.get(rec.image_id)
        if output is not None:
            results.extend(output.records)
            if output.panoptic is not None:
                summary.panoptic.append(output.panoptic)
    return results, summary


@output_session()
def run_to_folder(
    source: ModelSource,
    records: Sequence[ImageRecord],
    output_dir: str | os.PathLike,
    contiguous_to_dataset_id: Sequence[int] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
    panoptic_base: str | os.PathLike | Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], InferenceSummary, Path]:
    """Run ``source`` over ``records`` and write ``OUTPUT_DIR/coco_instances_results.json``; for a
    panoptic model also ``OUTPUT_DIR/panoptic_results.json`` with ``panoptic_results/<stem>.png``
    (COCO panoptic format) and ``sem_seg_results/<stem>.png`` (per-pixel semantic labels).

    Each image's output is appended to ``OUTPUT_DIR/coco_instances_results.partial.jsonl`` as
    soon as it exists (a panoptic image's PNGs before), so a run killed at any point loses at most
    one image; with ``resume`` the images recorded there by an earlier run of the same model and
    input rules are not run again (another run's file is refused). The partial file is removed once
    the results are written.

    Args:
        source: the model and how to feed it (:mod:`centermask2.engine.sources`).
        records: images, in output order.
        output_dir: created if missing.
        contiguous_to_dataset_id: category ids (default ``source.category_ids``).
        resume: continue an interrupted run.
        progress: tqdm progress bar.
        executor: where the images run (default: this process; e.g.
            :class:`~centermask2.engine.ray_executor.RayExecutor` for a Ray cluster).
        panoptic_base: the ground-truth panoptic JSON, which the panoptic results file copies with its
            ``annotations`` replaced (as detectron2 writes it); default: the images run and the
            COCO panoptic categories.

    Returns:
        (COCO results in image order, summary, path of the results file).

    Raises:
        OutputError: ``output_dir`` cannot be written.
        InputError: ``resume`` over another run's progress file; two images of a panoptic run whose
            PNGs would have the same name.
    """
    out_dir = ensure_writable_dir(output_dir, option="--output-dir")
    ids = list(contiguous_to_dataset_id if contiguous_to_dataset_id is not None else source.category_ids)
    identity = {
        "label": source.label,
        **source.identity(),
        "images": text_digest(json.dumps([[r.image_id, r.file_name] for r in records])),
        "categories": text_digest(json.dumps(ids)),
    }
    partial = PartialResults(out_dir / PARTIAL_NAME, identity=identity)
    done = partial.load() if resume else {}
    if not resume and partial.path.is_file():
        logger.warning("%s holds an interrupted run's progress; starting over (pass --resume to continue it)", partial.path)
    wanted = {r.image_id for r in records}
    done = {k: v for k, v in done.items() if k in wanted}
    if source.panoptic is not None:
        done = _panoptic_plan(records, done, out_dir)
    partial.start(done)
    try:
        results, summary = run_inference(source, records, ids, executor=executor, progress=progress, done=done,
                                         on_results=partial.append, output_dir=out_dir)
    finally:
        partial.close()
    results_path = out_dir / RESULTS_NAME
    atomic_write_json(results, results_path)
    if source.panoptic is not None:
        from ..evaluation.panoptic import PANOPTIC_RESULTS_NAME, write_panoptic_json

        write_panoptic_json(out_dir / PANOPTIC_RESULTS_NAME, summary.panoptic, base=panoptic_base)
    partial.finish()
    return results, summary, results_path


def _panoptic_plan(records: Sequence[ImageRecord], done: Mapping[int, ImageOutput], out_dir: Path) -> dict[int, ImageOutput]:
    """A panoptic run's checks before any image runs: every image has its own PNG name; resumed
    images keep their output only with their annotation and both PNGs in place (else they run again)."""
    from ..evaluation.panoptic import PANOPTIC_RESULTS_NAME, SEM_SEG_RESULTS_DIR, panoptic_png_name

    seen: dict[str, str] = {}
    for rec in records:
        name = panoptic_png_name(rec.file_name)
        if name in seen:
            raise InputError(f"{seen[name]!r} and {rec.file_name!r} would both write panoptic_results/{name}: a panoptic "
                             "run needs images with different file names (stems)")
        seen[name] = rec.file_name
    pngs = (out_dir / os.path.splitext(PANOPTIC_RESULTS_NAME)[0], out_dir / SEM_SEG_RESULTS_DIR)
    by_id = {r.image_id: r for r in records}
    return {k: v for k, v in done.items()
            if v.panoptic is not None and all((d / panoptic_png_name(by_id[k].file_name)).is_file() for d in pngs)}
