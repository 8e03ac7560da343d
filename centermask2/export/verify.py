"""Check an exported model against the PyTorch model it came from, on a real image."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ..data.spec import InputSpec
from ..data.transforms import load_and_resize, pad_batch
from ..engine.onnxruntime_backend import OnnxRuntimeBackend
from ..engine.torch_backend import TorchBackend
from ..evaluation.matching import DEFAULT_IOU, match_boxes
from ..modeling import CenterMask

__all__ = ["VerifyReport", "compare_outputs", "verify_onnx"]

logger = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """Detection-level agreement of two backends on one input.

    ``matched`` pairs come from :func:`~centermask2.evaluation.matching.match_boxes` (same class,
    box IoU >= 0.9); differences are over them.
    """

    num_reference: int = 0
    num_candidate: int = 0
    matched: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    max_mask_diff: float = 0.0
    max_mask_score_diff: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        return (
            f"detections: reference {self.num_reference}, candidate {self.num_candidate}, matched {self.matched}; "
            f"max |diff| over matched: box {self.max_box_diff:.4g} px, score {self.max_score_diff:.3g}, "
            f"mask prob {self.max_mask_diff:.3g}, mask_score {self.max_mask_score_diff:.3g}"
        )


def compare_outputs(
    ref: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    *,
    min_match: float = 0.95,
    max_box_diff: float = 1.0,
    max_score_diff: float = 2e-3,
) -> VerifyReport:
    """Compare the first image of two output dicts (:data:`~centermask2.contract.OUTPUT_NAMES`)
    detection by detection."""
    n_r, n_c = int(ref["num_detections"][0]), int(cand["num_detections"][0])
    rep = VerifyReport(num_reference=n_r, num_candidate=n_c)
    if n_r == 0 and n_c == 0:
        return rep
    pairs = match_boxes(
        ref["boxes"][0, :n_r], ref["classes"][0, :n_r], ref["scores"][0, :n_r],
        cand["boxes"][0, :n_c], cand["classes"][0, :n_c], DEFAULT_IOU,
    )
    rep.matched = len(pairs)
    for i, j in pairs:
        rep.max_box_diff = max(rep.max_box_diff, float(np.abs(ref["boxes"][0, i] - cand["boxes"][0, j]).max()))
        rep.max_score_diff = max(rep.max_score_diff, abs(float(ref["scores"][0, i] - cand["scores"][0, j])))
        rep.max_mask_diff = max(rep.max_mask_diff, float(np.abs(ref["masks"][0, i] - cand["masks"][0, j]).max()))
        rep.max_mask_score_diff = max(
            rep.max_mask_score_diff, abs(float(ref["mask_scores"][0, i] - cand["mask_scores"][0, j]))
        )
    if rep.matched < min_match * max(n_r, n_c):
        rep.problems.append(f"only {rep.matched} of {max(n_r, n_c)} detections match (need {min_match:.0%})")
    if rep.max_box_diff > max_box_diff:
        rep.problems.append(f"box difference {rep.max_box_diff:.3g} px > {max_box_diff}")
    if rep.max_score_diff > max_score_diff:
        rep.problems.append(f"score difference {rep.max_score_diff:.3g} > {max_score_diff}")
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
