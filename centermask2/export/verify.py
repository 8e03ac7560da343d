"""Check an exported model against the PyTorch model it came from, on a real image."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..contract import SEM_SEG_OUTPUT
from ..data.spec import InputSpec
from ..data.transforms import load_and_resize, pad_batch
from ..engine.onnxruntime_backend import OnnxRuntimeBackend
from ..engine.torch_backend import TorchBackend
from ..evaluation.matching import DEFAULT_IOU, match_boxes
from ..modeling import CenterMask

__all__ = ["BOUNDS", "VerifyReport", "compare_outputs", "verify_onnx"]

logger = logging.getLogger(__name__)


#: Default bounds of :func:`compare_outputs`, per output: the largest difference between PyTorch
#: and ONNX Runtime that still counts as agreement. Correct exports stay far below them (measured
#: on the golden images, dynamic exports: Lite masks 5.9e-5, mask scores 4.0e-6; panoptic V-39
#: masks 2.7e-4, mask scores 5.2e-5, sem_seg logits 6.4e-4); an export whose ``RoiAlign`` uses the
#: other coordinate rule goes far above them (Lite: masks 0.66, mask scores 0.13).
BOUNDS = {
    "boxes": 1.0,  # pixels, per coordinate
    "scores": 2e-3,
    "masks": 2e-2,  # mask probability, per pixel of the M x M mask
    "mask_scores": 2e-3,
    SEM_SEG_OUTPUT: 1e-2,  # semantic logits, per value
}


@dataclass
class VerifyReport:
    """Agreement of two backends on one input.

    ``matched`` pairs come from :func:`~centermask2.evaluation.matching.match_boxes` (same class,
    box IoU >= 0.9); box, score, mask and mask-score differences are over them. ``max_sem_seg_diff``
    is over the whole ``sem_seg`` output of a panoptic model (None: the model has none).
    ``problems`` name each output that disagreed, with the difference measured and its bound.
    """

    num_reference: int = 0
    num_candidate: int = 0
    matched: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    max_mask_diff: float = 0.0
    max_mask_score_diff: float = 0.0
    max_sem_seg_diff: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        sem_seg = "" if self.max_sem_seg_diff is None else f"; sem_seg logits {self.max_sem_seg_diff:.3g}"
        return (
            f"detections: reference {self.num_reference}, candidate {self.num_candidate}, matched {self.matched}; "
            f"max |diff| over matched: box {self.max_box_diff:.4g} px, score {self.max_score_diff:.3g}, "
            f"mask prob {self.max_mask_diff:.3g}, mask_score {self.max_mask_score_diff:.3g}{sem_seg}"
        )


def compare_outputs(
    ref: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    *,
    min_match: float = 0.95,
    bounds: Mapping[str, float] | None = None,
) -> VerifyReport:
    """Compare the first image of two output dicts (:data:`~centermask2.contract.OUTPUT_NAMES`,
    and ``sem_seg`` where the reference has it) detection by detection.

    Args:
        ref, cand: the outputs of the reference (PyTorch) and of the candidate.
        min_match: least fraction of detections (of the larger count) that must match.
        bounds: per output name, the largest max |difference| that agrees; missing names take
            :data:`BOUNDS`.
    """
    limit = {**BOUNDS, **(bounds or {})}
    n_r, n_c = int(ref["num_detections"][0]), int(cand["num_detections"][0])
    rep = VerifyReport(num_reference=n_r, num_candidate=n_c)
    if SEM_SEG_OUTPUT in ref:
        if SEM_SEG_OUTPUT not in cand:
            rep.problems.append(f"{SEM_SEG_OUTPUT}: missing from the candidate's outputs")
        elif ref[SEM_SEG_OUTPUT][0].shape != cand[SEM_SEG_OUTPUT][0].shape:
            rep.problems.append(f"{SEM_SEG_OUTPUT}: shape {list(cand[SEM_SEG_OUTPUT][0].shape)}, "
                                f"the reference's is {list(ref[SEM_SEG_OUTPUT][0].shape)}")
        else:
            diff = np.abs(ref[SEM_SEG_OUTPUT][0].astype(np.float64) - cand[SEM_SEG_OUTPUT][0])
            rep.max_sem_seg_diff = float(diff.max()) if diff.size else 0.0
    if n_r or n_c:
        pairs = match_boxes(
            ref["boxes"][0, :n_r], ref["classes"][0, :n_r], ref["scores"][0, :n_r],
            cand["boxes"][0, :n_c], cand["classes"][0, :n_c], DEFAULT_IOU,
        )
        rep.matched = len(pairs)
        if pairs:
            i, j = (np.array(k, dtype=np.int64) for k in zip(*pairs))

            def largest(name: str) -> float:  # NaN if any difference is NaN
                return float(np.abs(ref[name][0, i].astype(np.float64) - cand[name][0, j]).max())

            rep.max_box_diff, rep.max_score_diff = largest("boxes"), largest("scores")
            rep.max_mask_diff, rep.max_mask_score_diff = largest("masks"), largest("mask_scores")
        if rep.matched < min_match * max(n_r, n_c):
            rep.problems.append(
                f"detections: only {rep.matched} of {max(n_r, n_c)} match (same class, box IoU >= {DEFAULT_IOU}; "
                f"need {min_match:.0%})"
            )
    measured = {
        "boxes": (rep.max_box_diff, " px"),
        "scores": (rep.max_score_diff, ""),
        "masks": (rep.max_mask_diff, ""),
        "mask_scores": (rep.max_mask_score_diff, ""),
        SEM_SEG_OUTPUT: (rep.max_sem_seg_diff, ""),
    }
    for name, (value, unit) in measured.items():
        if value is not None and not value <= limit[name]:  # NaN disagrees too
            where = "over the whole output" if name == SEM_SEG_OUTPUT else "over matched detections"
            rep.problems.append(f"{name}: max |difference| {value:.3g}{unit} {where} > bound {limit[name]:g}{unit}")
    return rep


def verify_onnx(model: CenterMask, onnx_path: str | os.PathLike, image: str | os.PathLike) -> VerifyReport:
    """Run PyTorch and ONNX Runtime on ``image``, preprocessed as the ONNX model expects."""
    onnx_backend = OnnxRuntimeBackend(onnx_path)
    spec = InputSpec.from_metadata(onnx_backend.metadata)
    resized, _ = load_and_resize(image, spec)
    images, sizes = pad_batch([resized], spec)
    inputs = {"images": images, "image_sizes": sizes}
    ref = TorchBackend(model, "cpu", padding=onnx_backend.metadata.padding).run(inputs)
    cand = onnx_backend.run(inputs)
    report = compare_outputs(ref, cand)
    logger.info("verify %s on %s (input %s): %s", os.fspath(onnx_path), os.fspath(image), images.shape, report.format())
    return report
