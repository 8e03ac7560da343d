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

from ..data.catalog import ImageRecord
from ..data.spec import InputSpec
from ..data.transforms import load_and_resize, pad_batch
from ..errors import BackendError, CenterMask2Error, InputError
from ..evaluation.coco import instances_to_coco_json
from ..fileio import atomic_write_json, ensure_writable_dir, text_digest
from ..modeling.postprocessing import detector_postprocess
from ..summary import StageSummary
from .backend import Backend
from .resume import PartialResults

if TYPE_CHECKING:
    from .sources import ModelSource

__all__ = [
    "RESULTS_NAME",
    "PARTIAL_NAME",
    "InferenceSummary",
    "Infer",
    "batches",
    "load_batch",
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
            post-processing + COCO conversion.
    """

    num_detections: int = 0
    preprocess_s: list[float] = field(default_factory=list)
    postprocess_s: list[float] = field(default_factory=list)

    def format(self) -> str:
        n = max(self.num_images, 1)
        failed = f" ({len(self.failed)} unreadable, skipped)" if self.failed else ""
        return (
            f"{self.num_images} images{failed}, {self.num_detections} detections in {self.wall_s:.1f} s "
            f"({self.images_per_s:.2f} img/s). Per image: model median {self.model_ms_per_image():.1f} ms, "
            f"mean {1000 * sum(self.model_s) / n:.1f} ms; pre-processing {self.ms_per_image(sum(self.preprocess_s)):.1f} "
            f"ms; post-processing {self.ms_per_image(sum(self.postprocess_s)):.1f} ms"
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


def image_results(
    out: Mapping[str, np.ndarray],
    i: int,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
    image_id: int,
    contiguous_to_dataset_id: Sequence[int],
    mask_threshold: float = 0.5,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Image ``i`` of a backend call's outputs as post-processed detections and COCO records.

    Args:
        out: the backend's outputs (:data:`~centermask2.contract.OUTPUT_NAMES`), batch first.
        input_hw: the valid (h, w) the network saw; output_hw: the original image's (h, w).

    Returns:
        (:func:`~centermask2.modeling.postprocessing.detector_postprocess`'s result, its
        :func:`~centermask2.evaluation.coco.instances_to_coco_json` records).

    Raises:
        BackendError: the model returned non-finite boxes (a broken export or quantization: every
            image would be wrong, so the run stops).
    """
    n = int(out["num_detections"][i])
    if not np.isfinite(out["boxes"][i, :n]).all():
        raise BackendError(
            f"the model returned NaN or infinite boxes for image {image_id}: its outputs are corrupt (a broken "
            "export or quantization?); check it against the PyTorch model (convert_model_into_onnx.py --verify)"
        )
    det = detector_postprocess(
        torch.from_numpy(out["boxes"][i, :n]),
        torch.from_numpy(out["scores"][i, :n]),
        torch.from_numpy(out["classes"][i, :n]),
        torch.from_numpy(out["masks"][i, :n]),
        torch.from_numpy(out["mask_scores"][i, :n]),
        input_hw=input_hw,
        output_hw=output_hw,
        mask_threshold=mask_threshold,
    )
    return det, instances_to_coco_json(det, image_id, contiguous_to_dataset_id)


def run_inference(
    backend: Backend,
    records: Sequence[ImageRecord],
    spec: InputSpec,
    contiguous_to_dataset_id: Sequence[int],
    *,
    batch_size: int = 1,
    mask_threshold: float = 0.5,
    progress: bool = True,
    on_image: Callable[[ImageRecord, dict[str, torch.Tensor]], None] | None = None,
    done: Mapping[int, list[dict[str, Any]]] | None = None,
    on_results: Callable[[ImageRecord, list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], InferenceSummary]:
    """Run ``backend`` over ``records`` and build COCO result records.

    Args:
        backend: see :class:`Backend`.
        records: images (see :func:`~centermask2.data.catalog.list_images`).
        spec: resize / padding rules.
        contiguous_to_dataset_id: category id of every contiguous class.
        batch_size: images per backend call.
        mask_threshold: binarization threshold of pasted masks (0.5 upstream).
        progress: show a tqdm progress bar.
        on_image: optional callback with each image's post-processed detections.
        done: COCO records of images already processed (by image id, e.g. from
            :class:`~centermask2.engine.resume.PartialResults`); those images are not run again.
        on_results: optional callback with each newly processed image's COCO records.

    Returns:
        (COCO result dicts in image order, timing summary).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    summary = InferenceSummary()
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    done = dict(done or {})
    todo = [r for r in records if r.image_id not in done]
    summary.num_resumed = len(records) - len(todo)
    if done:
        logger.info("Resuming: %d of %d image(s) already done", len(records) - len(todo), len(records))
    new: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="inference")
    try:
        for batch in batches(todo, batch_size):
            t0 = time.perf_counter()
            batch_total = len(batch)
            loaded, readable, failed = load_batch(batch, spec)
            for name, reason in failed:
                logger.warning("skipping %s: %s", name, reason)
            summary.failed.extend(failed)
            if not readable:
                bar.update(batch_total)
                continue
            batch = readable
            images, sizes = pad_batch([im for im, _ in loaded], spec)
            t1 = time.perf_counter()
            out = backend.run({"images": images, "image_sizes": sizes})
            t2 = time.perf_counter()
            for i, rec in enumerate(batch):
                det, records_i = image_results(out, i, (int(sizes[i, 0]), int(sizes[i, 1])), loaded[i][1],
                                               rec.image_id, contiguous_to_dataset_id, mask_threshold)
                new[rec.image_id] = records_i
                if on_results is not None:
                    on_results(rec, records_i)
                summary.num_detections += int(det["boxes"].shape[0])
                if on_image is not None:
                    on_image(rec, det)
            t3 = time.perf_counter()
            summary.preprocess_s.append(t1 - t0)
            summary.model_s.append(t2 - t1)
            summary.postprocess_s.append(t3 - t2)
            summary.batch_sizes.append(len(batch))
            summary.num_images += len(batch)
            bar.update(batch_total)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - start
    for rec in records:  # input order, resumed and new together
        results.extend(done.get(rec.image_id, new.get(rec.image_id, [])))
    return results, summary


#: how :func:`run_to_folder` runs the images: ``infer(source, records, ids, progress=, done=,
#: on_results=)`` with :func:`run_inference`'s meaning, returning its (results, summary)
Infer = Callable[..., tuple[list[dict[str, Any]], InferenceSummary]]


def _infer_here(
    source: ModelSource, records: Sequence[ImageRecord], ids: Sequence[int], **kwargs: Any
) -> tuple[list[dict[str, Any]], InferenceSummary]:
    """:data:`Infer` in this process: :func:`run_inference` with the source's backend."""
    return run_inference(source.backend, records, source.spec, ids, batch_size=source.batch_size, **kwargs)


def run_to_folder(
    source: ModelSource,
    records: Sequence[ImageRecord],
    output_dir: str | os.PathLike,
    contiguous_to_dataset_id: Sequence[int] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    infer: Infer | None = None,
) -> tuple[list[dict[str, Any]], InferenceSummary, Path]:
    """Run ``source`` over ``records`` and write ``OUTPUT_DIR/coco_instances_results.json``.

    Each image's records are appended to ``OUTPUT_DIR/coco_instances_results.partial.jsonl`` as
    soon as they exist, so a run killed at any point loses at most one image; with ``resume`` the
    images recorded there by an earlier run of the same model and input rules are not run again
    (another run's file is refused). The partial file is removed once the results are written.

    Args:
        source: the model and how to feed it (:mod:`centermask2.engine.sources`).
        records: images, in output order.
        output_dir: created if missing.
        contiguous_to_dataset_id: category ids (default ``source.category_ids``).
        resume: continue an interrupted run.
        progress: tqdm progress bar.
        infer: what runs the images (default: this process, :func:`run_inference`; e.g.
            :func:`centermask2.engine.ray_runner.ray_infer` for a Ray cluster).

    Returns:
        (COCO results in image order, summary, path of the results file).

    Raises:
        OutputError: ``output_dir`` cannot be written.
        InputError: ``resume`` over another run's progress file.
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
    partial.start(done)
    try:
        results, summary = (infer or _infer_here)(
            source, records, ids, progress=progress, done=done, on_results=partial.append
        )
    finally:
        partial.close()
    results_path = out_dir / RESULTS_NAME
    atomic_write_json(results, results_path)
    partial.finish()
    return results, summary, results_path
