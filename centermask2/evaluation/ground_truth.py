"""The ground truth a run is scored against, found once for every script that scores.

COCO instances (bbox / segm), COCO panoptic (PQ) and semantic ``panoptic_stuff`` PNGs (sem_seg),
given by options or by a registered dataset (:func:`~centermask2.data.catalog.resolve_panoptic_dataset`).
:func:`read_panoptic_inputs` reads and checks the panoptic files before any scoring;
:func:`evaluate_panoptic_inputs` scores them. ``tester.py`` and ``postprocess_bin_outputs.py``
use these.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingFileError
from .panoptic import (
    SEM_SEG_RESULTS_DIR,
    PanopticAnnotations,
    evaluate_panoptic,
    read_panoptic_gt,
    read_panoptic_results,
)
from .sem_seg import evaluate_sem_seg

__all__ = ["GroundTruth", "PanopticInputs", "find_ground_truth", "read_panoptic_inputs", "evaluate_panoptic_inputs"]

logger = logging.getLogger(__name__)


@dataclass
class GroundTruth:
    """Ground-truth files (from the options, else from a registered dataset).

    Attributes:
        coco_json: COCO instances annotations; panoptic_json, panoptic_root: COCO panoptic
            annotations and their PNG folder; sem_seg_root: ``panoptic_stuff`` PNGs.
        sem_seg_explicit: ``sem_seg_root`` was given (a missing folder is then an error, not a
            skipped metric).
    """

    coco_json: str | None = None
    panoptic_json: str | None = None
    panoptic_root: str | None = None
    sem_seg_root: str | None = None
    sem_seg_explicit: bool = False


def find_ground_truth(
    coco_json: str | None = None,
    panoptic_json: str | None = None,
    panoptic_root: str | None = None,
    sem_seg_root: str | None = None,
    dataset: str | None = None,
    *,
    need_coco: bool = False,
) -> GroundTruth:
    """The ground truth of the options; a panoptic ``dataset`` fills what they leave out.

    Args:
        need_coco: the COCO instances annotations are required (bbox / segm results to score).

    Raises:
        InputError, MissingFileError: an unknown dataset, or a dataset without the files asked for.
    """
    from ..data.catalog import resolve_panoptic_dataset

    truth = GroundTruth(coco_json, panoptic_json, panoptic_root, sem_seg_root, sem_seg_root is not None)
    if dataset:
        paths = resolve_panoptic_dataset(dataset)
        if need_coco and truth.coco_json is None:
            if not paths.instances_json.is_file():
                raise MissingFileError(f"dataset {dataset!r}: {str(paths.instances_json)!r} not found (bbox/segm "
                                       "ground truth); or give --coco-json")
            truth.coco_json = str(paths.instances_json)
        if truth.panoptic_json is None:
            truth.panoptic_json, truth.panoptic_root = str(paths.panoptic_json), truth.panoptic_root or str(paths.panoptic_root)
        truth.sem_seg_root = truth.sem_seg_root or str(paths.sem_seg_root)
    return truth


@dataclass
class PanopticInputs:
    """Checked panoptic ground truth and predictions, and the semantic folders to score (or None)."""

    gt: PanopticAnnotations
    predictions: PanopticAnnotations
    #: (prediction folder, ground-truth folder) of the semantic evaluation, or None to skip it
    sem_seg: tuple[Path, Path] | None


def read_panoptic_inputs(panoptic_results: str | os.PathLike, truth: GroundTruth) -> PanopticInputs:
    """Read and check the panoptic files (and find the semantic ones) before any scoring.

    The semantic predictions are the ``sem_seg_results/`` folder next to ``panoptic_results``.

    Raises:
        InputError, MissingFileError: unusable ground truth or predictions (named).
    """
    if truth.panoptic_json is None:
        raise InputError("panoptic results need --panoptic-json (the ground-truth panoptic annotations) or --dataset")
    gt = read_panoptic_gt(truth.panoptic_json, truth.panoptic_root)
    predictions = read_panoptic_results(panoptic_results)
    pred_dir = Path(panoptic_results).parent / SEM_SEG_RESULTS_DIR
    sem_seg = None
    if not pred_dir.is_dir():
        logger.info("No %s/ folder next to %s: sem_seg skipped", SEM_SEG_RESULTS_DIR, panoptic_results)
    elif truth.sem_seg_root is None:
        logger.info("%s/ found but no --sem-seg-root (semantic ground truth): sem_seg skipped", SEM_SEG_RESULTS_DIR)
    elif not Path(truth.sem_seg_root).is_dir():
        if truth.sem_seg_explicit:
            raise MissingFileError(f"--sem-seg-root {truth.sem_seg_root!r} not found; make it with "
                                   "tools/prepare_panoptic_stuff.py")
        logger.info("No semantic ground truth at %s (make it with tools/prepare_panoptic_stuff.py): sem_seg skipped",
                    truth.sem_seg_root)
    else:
        sem_seg = (pred_dir, Path(truth.sem_seg_root))
    return PanopticInputs(gt, predictions, sem_seg)


def evaluate_panoptic_inputs(inputs: PanopticInputs) -> dict[str, dict[str, Any]]:
    """``panoptic_seg`` (and ``sem_seg``) metrics; a PNG that disagrees with its JSON raises InputError."""
    metrics = evaluate_panoptic(inputs.predictions, inputs.gt)
    if inputs.sem_seg is not None:
        images = inputs.gt.images.values()
        metrics.update(evaluate_sem_seg(inputs.sem_seg[0], inputs.sem_seg[1], [im.file_name for im in images],
                                        image_sizes={im.file_name: im.size for im in images}))
    return metrics
