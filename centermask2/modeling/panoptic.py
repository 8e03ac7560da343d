"""Panoptic post-processing: semantic logits back to the original image, and the combination of
instances and semantic labels into one segment map.

Pure functions reproducing detectron2's inference path of ``PanopticFPN``:
``detectron2/modeling/postprocessing.py::sem_seg_postprocess`` (after the semantic head's 4x
upsampling) and ``detectron2/modeling/meta_arch/panoptic_fpn.py::combine_semantic_and_instance_outputs``.
Category ids stay contiguous as the model predicts them (things 0-79 as ``classes``, stuff 1-53 as
semantic labels; label 0 is "things"); converting to dataset ids is the writer's job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import InputError
from .postprocessing import detector_postprocess

__all__ = [
    "CombineSettings",
    "PanopticResult",
    "sem_seg_postprocess",
    "sem_seg_argmax",
    "combine_semantic_and_instance_outputs",
    "panoptic_postprocess",
]

logger = logging.getLogger(__name__)

#: channels upsampled together by :func:`sem_seg_argmax`: bounds the memory of the full-size
#: intermediate (and keeps it in cache), the result does not depend on it
_ARGMAX_CHANNEL_CHUNK = 8


@dataclass(frozen=True)
class CombineSettings:
    """How instances and semantic labels are combined (``MODEL.PANOPTIC_FPN.COMBINE``).

    Attributes:
        overlap_thresh: an instance is skipped when more than this fraction of its mask is already
            taken by better-scored instances (``OVERLAP_THRESH``).
        stuff_area_thresh: a stuff class becomes a segment only with at least this many free
            pixels (``STUFF_AREA_LIMIT``).
        instances_score_thresh: instances with a lower box score are left out
            (``INSTANCES_CONFIDENCE_THRESH``).
    """

    overlap_thresh: float = 0.5
    stuff_area_thresh: float = 4096
    instances_score_thresh: float = 0.5

    @classmethod
    def from_config(cls, cfg: Any) -> CombineSettings:
        """The settings of ``cfg.MODEL.PANOPTIC_FPN.COMBINE``."""
        c = cfg.MODEL.PANOPTIC_FPN.COMBINE
        return cls(
            overlap_thresh=float(c.OVERLAP_THRESH),
            stuff_area_thresh=c.STUFF_AREA_LIMIT,
            instances_score_thresh=float(c.INSTANCES_CONFIDENCE_THRESH),
        )


def _check_logits(logits: Tensor, image_size: tuple[int, int], output_size: tuple[int, int], stride: int) -> None:
    if logits.dim() != 3:
        raise InputError(f"semantic logits must be Tensor[C, H, W] (one image), got shape {tuple(logits.shape)}")
    h, w = (int(v) for v in image_size)
    if min(h, w, *(int(v) for v in output_size)) <= 0:
        raise InputError(f"image sizes must be positive, got image_size={image_size}, output_size={output_size}")
    if h > logits.shape[1] * stride or w > logits.shape[2] * stride:
        raise InputError(
            f"an image of {h}x{w} does not fit semantic logits of {logits.shape[1]}x{logits.shape[2]} at "
            f"stride {stride}; pass the image's resized size and the logits of its own batch row"
        )


def _cropped_logits(logits: Tensor, image_size: tuple[int, int], size_divisibility: int | None, stride: int) -> Tensor:
    """The logits of the image's own padded input: its size rounded up to ``size_divisibility``
    (upstream's single-image tensor), or all of them when None / 0."""
    if not size_divisibility:
        return logits.contiguous()
    d = int(size_divisibility)
    rows, cols = (math.ceil(int(v) / d) * d // stride for v in image_size)
    if (rows, cols) == tuple(logits.shape[1:]):
        return logits.contiguous()
    # contiguous, as upstream's own tensor of this size
    return logits[:, :rows, :cols].contiguous()


def sem_seg_postprocess(
    logits: Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    size_divisibility: int | None = 32,
    common_stride: int = 4,
) -> Tensor:
    """Semantic logits of one image in the original image's pixels, as detectron2 computes them.

    The semantic head's upsampling (``common_stride`` x, bilinear, ``align_corners=False``), then
    detectron2's ``sem_seg_postprocess``: crop to the resized image and resize bilinearly
    (``align_corners=False``) to the original size.

    Before that, the logits are cropped to the image's own input, its size rounded up to
    ``size_divisibility``: the tensor upstream runs a single image on. This changes nothing when
    the logits already have that size, and is what makes a row of a larger batch or a static model
    (run with ``ignore_padding``) give upstream's result: the upsampling of the last rows and
    columns would otherwise read the first row / column of the padding instead of repeating the
    image's last one.

    Args:
        logits (Tensor[C, h', w']): the model's ``sem_seg`` output for this image (its batch row),
            at stride ``common_stride`` of the padded input.
        image_size: (h, w) of the resized image the network saw.
        output_size: (H, W) of the original image.
        size_divisibility: the model's; None or 0 keeps the whole tensor (outputs of a run with
            the padding included, as upstream on that padded tensor).
        common_stride: stride of ``logits`` (``MODEL.SEM_SEG_HEAD.COMMON_STRIDE``).

    Returns:
        Tensor[C, H, W] float32 logits.
    """
    logits = torch.as_tensor(logits)
    _check_logits(logits, image_size, output_size, common_stride)
    h, w = (int(v) for v in image_size)
    x = _cropped_logits(logits.float(), image_size, size_divisibility, common_stride)
    up = F.interpolate(x[None], scale_factor=float(common_stride), mode="bilinear", align_corners=False)
    # the same view detectron2 resizes: [1, C, h, w] of the upsampled tensor
    crop = up[0, :, :h, :w].expand(1, -1, -1, -1)
    return F.interpolate(crop, size=tuple(int(v) for v in output_size), mode="bilinear", align_corners=False)[0]


def sem_seg_argmax(
    logits: Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    size_divisibility: int | None = 32,
    common_stride: int = 4,
) -> Tensor:
    """Per-pixel class of :func:`sem_seg_postprocess`'s logits (the first on ties, as ``argmax``).

    The same labels, for less work: each channel is resized on its own (the same numbers whatever
    channels go with it), a few at a time, so the full-size logits of all classes never exist at
    once; and a class that cannot win anywhere is not resized at all. Every resized value is a
    convex combination of a 3x3 block of the stride-4 logits, so a class whose 3x3 maximum stays
    below another class's 3x3 minimum at every position (with a margin far above float rounding)
    never reaches the per-pixel maximum, nor ties it.

    Args:
        logits, image_size, output_size, size_divisibility, common_stride: as for
            :func:`sem_seg_postprocess`.

    Returns:
        Tensor[H, W] int64 contiguous semantic labels.
    """
    logits = torch.as_tensor(logits)
    _check_logits(logits, image_size, output_size, common_stride)
    x = _cropped_logits(logits.float(), image_size, size_divisibility, common_stride)
    classes = _candidate_classes(x)
    if classes.shape[0] < x.shape[0]:
        x = x.index_select(0, classes)
    best_value: Tensor | None = None
    best_label: Tensor | None = None
    for start in range(0, x.shape[0], _ARGMAX_CHANNEL_CHUNK):
        part = sem_seg_postprocess(x[start : start + _ARGMAX_CHANNEL_CHUNK], image_size, output_size, None, common_stride)
        value, label = part.max(dim=0)
        if best_value is None or best_label is None:
            best_value, best_label = value, label
            continue
        better = value > best_value  # strict: ties keep the earlier class
        best_value = torch.where(better, value, best_value)
        best_label = torch.where(better, label + start, best_label)
    assert best_label is not None
    return classes[best_label]


def _candidate_classes(x: Tensor) -> Tensor:
    """Tensor[K] int64, increasing: the classes of ``x`` (Tensor[C, h, w] logits at the common
    stride) that can be the largest after the bilinear resizing somewhere (all of them when ``x``
    is not finite).

    An output pixel of the two bilinear steps reads rows ``j .. j+2`` and columns ``i .. i+2`` of
    ``x`` (each step reads two neighbours, and two neighbouring pixels of the 4x upsampled map read
    at most three neighbouring rows / columns of ``x``), with non-negative weights summing to 1.
    Its value for class c is therefore between the minimum and the maximum of c over the 3x3 block
    centred at ``(j + 1, i + 1)`` (clamped to the map), up to rounding: a few float32 ulps.
    """
    num = x.shape[0]
    if num <= 1 or not bool(torch.isfinite(x).all()):
        return torch.arange(num)
    highest = _extreme_3x3(x, torch.maximum)  # [C, h, w]
    lowest = _extreme_3x3(x, torch.minimum)
    margin = 1e-4 * float(x.abs().max()) + 1e-30  # ~1000 ulps of the largest logit
    can_win = (highest + margin >= lowest.max(dim=0).values).flatten(1).any(dim=1)
    return torch.nonzero(can_win).flatten()


def _extreme_3x3(x: Tensor, op: Any) -> Tensor:
    """Maximum (``op=torch.maximum``) or minimum over each 3x3 block of Tensor[C, h, w], clamped
    at the borders; separable, in place on one copy (cheaper than ``max_pool2d`` with stride 1)."""
    out = x.clone()
    for dim in (2, 1):
        src = out.clone()
        size = src.shape[dim]
        if size > 1:
            op(out.narrow(dim, 1, size - 1), src.narrow(dim, 0, size - 1), out=out.narrow(dim, 1, size - 1))
            op(out.narrow(dim, 0, size - 1), src.narrow(dim, 1, size - 1), out=out.narrow(dim, 0, size - 1))
    return out


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def combine_semantic_and_instance_outputs(
    instances: Mapping[str, Tensor | np.ndarray],
    semantic: Tensor | np.ndarray,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: float = 4096,
    instances_score_thresh: float = 0.5,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """detectron2's panoptic combination of instances and semantic labels.

    Instances in decreasing box score, while the score is at least ``instances_score_thresh``:
    one with an empty mask, or with more than ``overlap_thresh`` of its mask already taken, is
    skipped; otherwise its still free pixels become the next segment. Then every semantic label
    but 0 ("things"), in increasing order, whose free pixels number at least
    ``stuff_area_thresh`` makes a segment of them. Segment ids count from 1; 0 is void.

    Args:
        instances: one image's detections in original-image pixels
            (:func:`~centermask2.modeling.postprocessing.detector_postprocess`): ``scores``
            Tensor[N] box scores (upstream ranks by these, not ``mask_scores``), ``classes``
            Tensor[N] contiguous thing classes, ``masks`` Tensor[N, H, W] bool.
        semantic (Tensor[H, W] int): contiguous semantic label per pixel (:func:`sem_seg_argmax`).
        overlap_thresh, stuff_area_thresh, instances_score_thresh: see :class:`CombineSettings`
            (``**dataclasses.asdict(settings)`` passes them).

    Returns:
        (panoptic_seg Tensor[H, W] int32 segment ids, segments_info): per segment in id order a
        dict ``{"id", "isthing": True, "score", "category_id", "instance_id"}`` for instances
        (``category_id`` the contiguous class, ``instance_id`` the row in ``instances``) or
        ``{"id", "isthing": False, "category_id", "area"}`` for stuff (``category_id`` the
        semantic label).
    """
    labels = _as_numpy(semantic)
    if labels.ndim != 2:
        raise InputError(f"semantic labels must be [H, W], got shape {labels.shape}")
    missing = {"scores", "classes", "masks"} - set(instances)
    if missing:
        raise InputError(f"instances lack {sorted(missing)}; pass detector_postprocess's result of a mask model")
    scores = _as_numpy(instances["scores"]).astype(np.float32, copy=False).reshape(-1)
    classes = _as_numpy(instances["classes"]).reshape(-1)
    masks = _as_numpy(instances["masks"])
    if masks.shape[1:] != labels.shape or masks.shape[0] != scores.shape[0] or classes.shape[0] != scores.shape[0]:
        raise InputError(
            f"instances (scores {scores.shape}, classes {classes.shape}, masks {masks.shape}) do not agree with "
            f"each other or with the semantic labels {labels.shape}"
        )
    masks = masks.astype(bool, copy=False)
    panoptic = np.zeros(labels.shape, dtype=np.int32)
    free = np.ones(labels.shape, dtype=bool)
    segments: list[dict[str, Any]] = []

    for index in np.argsort(-scores, kind="stable").tolist():
        score = float(scores[index])
        if score < instances_score_thresh:
            break
        window = _support(masks[index])
        if window is None:
            continue  # empty mask
        mask = masks[index][window]
        area = int(np.count_nonzero(mask))
        mine = mask & free[window]
        taken = area - int(np.count_nonzero(mine))
        if taken * 1.0 / area > overlap_thresh:
            continue
        segment_id = len(segments) + 1
        panoptic[window][mine] = segment_id
        free[window] &= ~mine
        segments.append(
            {"id": segment_id, "isthing": True, "score": score, "category_id": int(classes[index]), "instance_id": index}
        )

    # Stuff: segments of different labels are disjoint, so all of them are found from one count of
    # the free pixels per label (upstream's loop over the labels present, in increasing order).
    if labels.size:
        if labels.min() < 0:
            raise InputError(f"semantic labels must be non-negative, got {int(labels.min())}")
        free_labels = labels[free]
        present = np.bincount(labels.reshape(-1)) > 0
        free_area = np.bincount(free_labels, minlength=present.shape[0])
        lookup = np.zeros(present.shape[0], dtype=np.int32)
        for label in np.flatnonzero(present).tolist():
            area = int(free_area[label])
            if label == 0 or area < stuff_area_thresh:
                continue
            segment_id = len(segments) + 1
            lookup[label] = segment_id
            segments.append({"id": segment_id, "isthing": False, "category_id": label, "area": area})
        panoptic[free] = lookup[free_labels]
    return torch.from_numpy(panoptic), segments


def _support(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding window of a [H, W] bool mask's True pixels, or None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


@dataclass
class PanopticResult:
    """One image's panoptic output in original-image pixels.

    Attributes:
        instances: :func:`~centermask2.modeling.postprocessing.detector_postprocess`'s dict
            (``boxes``, ``scores``, ``classes``, ``masks`` bool [N, H, W], ``mask_scores``).
        sem_seg: Tensor[H, W] int64 contiguous semantic label per pixel.
        panoptic_seg: Tensor[H, W] int32 segment ids (0 = void).
        segments_info: see :func:`combine_semantic_and_instance_outputs`.
    """

    instances: dict[str, Tensor]
    sem_seg: Tensor
    panoptic_seg: Tensor
    segments_info: list[dict[str, Any]]


def panoptic_postprocess(
    outputs: Mapping[str, Tensor | np.ndarray],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    settings: CombineSettings | None = None,
    size_divisibility: int | None = 32,
    common_stride: int = 4,
) -> PanopticResult:
    """A panoptic model's outputs for one image -> instances, semantic labels and panoptic
    segments in the original image, as detectron2's ``PanopticFPN.inference``.

    Args:
        outputs: one image's row of the model outputs (no batch dimension): ``boxes`` [K, 4],
            ``scores`` [K], ``classes`` [K], ``masks`` [K, M, M], ``mask_scores`` [K],
            ``num_detections`` (scalar) and ``sem_seg`` [C, h', w'].
        image_size: (h, w) of the resized image the network saw.
        output_size: (H, W) of the original image.
        settings: combination thresholds (default: detectron2's).
        size_divisibility, common_stride: see :func:`sem_seg_postprocess`.
    """
    settings = settings or CombineSettings()
    n = int(np.asarray(_as_numpy(outputs["num_detections"])).reshape(-1)[0])
    rows = {k: torch.as_tensor(outputs[k])[:n] for k in ("boxes", "scores", "classes", "masks", "mask_scores")}
    instances = detector_postprocess(
        rows["boxes"], rows["scores"], rows["classes"], rows["masks"], rows["mask_scores"], image_size, output_size
    )
    labels = sem_seg_argmax(torch.as_tensor(outputs["sem_seg"]), image_size, output_size, size_divisibility, common_stride)
    panoptic, segments = combine_semantic_and_instance_outputs(
        instances,
        labels,
        overlap_thresh=settings.overlap_thresh,
        stuff_area_thresh=settings.stuff_area_thresh,
        instances_score_thresh=settings.instances_score_thresh,
    )
    return PanopticResult(instances=instances, sem_seg=labels, panoptic_seg=panoptic, segments_info=segments)
