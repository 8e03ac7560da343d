"""Training targets and losses, as upstream centermask2 trains (FCOS, mask and MaskIoU heads).

Everything here reproduces a convention of upstream's training forward (centermask2 on
detectron2); each function names the one it follows. The shapes use

* ``L``: locations of all pyramid levels, level-first (P3 row-major, then P4, ...);
* ``G``: ground-truth instances of one image;
* ``F``: foreground ROIs of the batch (sampled proposals matched to a ground-truth instance).

Polygons are lists of flat ``float64`` arrays ``[x0, y0, x1, y1, ...]`` in network-input pixels,
one list per instance; the mask targets are rasterized from them with pycocotools, as upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch import Tensor
from torch.nn import functional as F

from ..errors import ConfigError
from .ops.nms import box_iou

__all__ = [
    "FCOSTrainSettings",
    "ROITrainSettings",
    "sigmoid_focal_loss",
    "iou_loss",
    "fcos_targets",
    "fcos_losses",
    "match_and_sample",
    "rasterize_polygons_in_box",
    "mask_targets",
    "mask_and_maskiou_losses",
]

#: "no ground truth here" area (upstream's INF)
_INF = 100000000.0


@dataclass(frozen=True)
class FCOSTrainSettings:
    """``MODEL.FCOS`` training keys.

    Attributes:
        focal_alpha, focal_gamma: ``LOSS_ALPHA``, ``LOSS_GAMMA``.
        center_sample, pos_radius: ``CENTER_SAMPLE``, ``POS_RADIUS`` (in level strides).
        sizes_of_interest: ``SIZES_OF_INTEREST``; level ``l`` takes boxes whose largest distance
            to the location is in ``[soi[l-1], soi[l]]`` (``-1`` and infinity at the ends).
        loc_loss_type: ``LOC_LOSS_TYPE``: ``"iou"``, ``"linear_iou"`` or ``"giou"``.
        score_thresh, pre_nms_topk, post_nms_topk: ``INFERENCE_TH_TRAIN``, ``PRE_NMS_TOPK_TRAIN``,
            ``POST_NMS_TOPK_TRAIN`` for the proposals fed to the ROI heads.
    """

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    center_sample: bool = True
    pos_radius: float = 1.5
    sizes_of_interest: tuple[float, ...] = (64, 128, 256, 512)
    loc_loss_type: str = "giou"
    score_thresh: float = 0.05
    pre_nms_topk: int = 1000
    post_nms_topk: int = 100

    def __post_init__(self) -> None:
        if self.loc_loss_type not in ("iou", "linear_iou", "giou"):
            raise ConfigError(
                f"MODEL.FCOS.LOC_LOSS_TYPE={self.loc_loss_type!r}: use 'iou', 'linear_iou' or 'giou'"
            )

    def size_ranges(self) -> list[tuple[float, float]]:
        """Per level ``(low, high)`` of the largest regression distance it is responsible for."""
        bounds = [-1.0, *[float(s) for s in self.sizes_of_interest], _INF]
        return list(zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class ROITrainSettings:
    """``MODEL.ROI_HEADS`` / ``MODEL.MASKIOU_LOSS_WEIGHT`` training keys.

    Attributes:
        iou_thresholds, iou_labels: ``IOU_THRESHOLDS`` and ``IOU_LABELS`` of the proposal matcher
            (a proposal's best IoU in ``[t_i, t_{i+1})`` gets ``labels[i]``: 1 foreground,
            0 background, -1 ignored).
        batch_size_per_image, positive_fraction: ``BATCH_SIZE_PER_IMAGE``, ``POSITIVE_FRACTION``.
        append_gt: ``PROPOSAL_APPEND_GT``.
        maskiou_weight: ``MODEL.MASKIOU_LOSS_WEIGHT``.
    """

    iou_thresholds: tuple[float, ...] = (0.5,)
    iou_labels: tuple[int, ...] = (0, 1)
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    append_gt: bool = True
    maskiou_weight: float = 1.0
    _bounds: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.iou_labels) != len(self.iou_thresholds) + 1:
            raise ConfigError(
                f"MODEL.ROI_HEADS.IOU_LABELS {list(self.iou_labels)} needs one more entry than "
                f"IOU_THRESHOLDS {list(self.iou_thresholds)}"
            )
        if any(lab not in (-1, 0, 1) for lab in self.iou_labels):
            raise ConfigError(f"MODEL.ROI_HEADS.IOU_LABELS must be -1, 0 or 1, got {list(self.iou_labels)}")
        object.__setattr__(self, "_bounds", (-math.inf, *self.iou_thresholds, math.inf))


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Summed focal loss (fvcore's ``sigmoid_focal_loss``, computed in float32 as it is).

    Args:
        logits, targets (Tensor[N, C]): class logits and 0/1 targets.

    Returns:
        Tensor[] float32.
    """
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def iou_loss(pred: Tensor, target: Tensor, weight: Tensor, loss_type: str) -> Tensor:
    """Weighted sum of FCOS's IoU loss on (l, t, r, b) distances (upstream's ``IOULoss``).

    Args:
        pred, target (Tensor[P, 4]): predicted and target distances of the positives.
        weight (Tensor[P]): per-positive weight (the centerness targets).
        loss_type: ``"iou"`` (``-log IoU``), ``"linear_iou"`` (``1 - IoU``) or ``"giou"``.

    Returns:
        Tensor[]: ``sum(loss * weight)``; IoU is smoothed as ``(inter + 1) / (union + 1)``.
    """
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    w_inter = torch.min(pl, tl) + torch.min(pr, tr)
    h_inter = torch.min(pb, tb) + torch.min(pt, tt)
    w_enclose = torch.max(pl, tl) + torch.max(pr, tr)
    h_enclose = torch.max(pb, tb) + torch.max(pt, tt)
    enclose = w_enclose * h_enclose
    inter = w_inter * h_inter
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    if loss_type == "iou":
        losses = -torch.log(ious)
    elif loss_type == "linear_iou":
        losses = 1 - ious
    else:
        losses = 1 - (ious - (enclose - union) / enclose)
    return (losses * weight).sum()


def fcos_targets(
    locations: list[Tensor],
    strides: list[int],
    gt_boxes: list[Tensor],
    gt_classes: list[Tensor],
    num_classes: int,
    settings: FCOSTrainSettings,
) -> tuple[Tensor, Tensor]:
    """FCOS target assignment (upstream's ``FCOSOutputs._get_ground_truth``).

    A location is positive for a box when it lies inside the box's centre region (``pos_radius``
    strides around the box centre, clipped to the box; the whole box without ``center_sample``)
    and the box's largest distance from it is in the level's size range; of several such boxes
    it takes the smallest (first on ties).

    Args:
        locations: per level Tensor[Hl * Wl, 2] image-plane ``(x, y)``
            (:func:`~.fcos.compute_locations`).
        strides: per level stride.
        gt_boxes: per image Tensor[G, 4] xyxy float32; gt_classes: per image Tensor[G] int64.

    Returns:
        labels (Tensor[B * L] int64): class per location, ``num_classes`` for background,
        ordered level, image, row, column (as upstream flattens its predictions);
        reg_targets (Tensor[B * L, 4]): (l, t, r, b) distances divided by the level's stride.
    """
    num_loc = [int(loc.shape[0]) for loc in locations]
    all_loc = torch.cat(locations, dim=0)
    xs, ys = all_loc[:, 0], all_loc[:, 1]
    ranges = all_loc.new_tensor([r for r, n in zip(settings.size_ranges(), num_loc) for _ in range(n)])
    loc_stride = torch.cat([all_loc.new_full((n,), float(s)) for s, n in zip(strides, num_loc)])
    labels_per_image, reg_per_image = [], []
    for boxes, classes in zip(gt_boxes, gt_classes):
        if boxes.numel() == 0:
            labels_per_image.append(torch.full((all_loc.shape[0],), num_classes, dtype=torch.int64, device=xs.device))
            reg_per_image.append(all_loc.new_zeros((all_loc.shape[0], 4)))
            continue
        x1, y1, x2, y2 = boxes[:, 0][None], boxes[:, 1][None], boxes[:, 2][None], boxes[:, 3][None]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        reg = torch.stack((xs[:, None] - x1, ys[:, None] - y1, x2 - xs[:, None], y2 - ys[:, None]), dim=2)
        if settings.center_sample:
            inside = _in_center_region(boxes, xs, ys, loc_stride * settings.pos_radius)
        else:
            inside = reg.min(dim=2).values > 0
        max_reg = reg.max(dim=2).values
        cared = (max_reg >= ranges[:, [0]]) & (max_reg <= ranges[:, [1]])
        loc_area = area[None].repeat(all_loc.shape[0], 1)
        loc_area[~inside] = _INF
        loc_area[~cared] = _INF
        min_area, gt_index = loc_area.min(dim=1)
        reg = reg[torch.arange(all_loc.shape[0], device=xs.device), gt_index]
        labels = classes[gt_index].clone()
        labels[min_area == _INF] = num_classes
        labels_per_image.append(labels)
        reg_per_image.append(reg)
    labels_out, reg_out = [], []
    start = 0
    for n, stride in zip(num_loc, strides):
        for labels, reg in zip(labels_per_image, reg_per_image):
            labels_out.append(labels[start : start + n])
            reg_out.append(reg[start : start + n] / float(stride))
        start += n
    return torch.cat(labels_out), torch.cat(reg_out)


def _in_center_region(boxes: Tensor, xs: Tensor, ys: Tensor, radius: Tensor) -> Tensor:
    """Tensor[L, G] bool: location inside the box's centre square of half-side ``radius``
    (per location, in pixels), clipped to the box."""
    if boxes.numel() == 0 or float(((boxes[:, 0] + boxes[:, 2]) / 2)[0]) == 0.0:
        # upstream's "no ground truth" test looks at the first box's centre only
        return torch.zeros((xs.shape[0], boxes.shape[0]), dtype=torch.bool, device=xs.device)
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2)[None]
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2)[None]
    r = radius[:, None]
    x1 = torch.where(cx - r > boxes[None, :, 0], cx - r, boxes[None, :, 0])
    y1 = torch.where(cy - r > boxes[None, :, 1], cy - r, boxes[None, :, 1])
    x2 = torch.where(cx + r > boxes[None, :, 2], boxes[None, :, 2], cx + r)
    y2 = torch.where(cy + r > boxes[None, :, 3], boxes[None, :, 3], cy + r)
    dist = torch.stack((xs[:, None] - x1, ys[:, None] - y1, x2 - xs[:, None], y2 - ys[:, None]), dim=2)
    return dist.min(dim=2).values > 0


def _centerness(reg_targets: Tensor) -> Tensor:
    """Tensor[P, 4] (l, t, r, b) -> Tensor[P]: ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``."""
    if reg_targets.shape[0] == 0:
        return reg_targets.new_zeros((0,))
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    return torch.sqrt((lr.min(dim=-1).values / lr.max(dim=-1).values) * (tb.min(dim=-1).values / tb.max(dim=-1).values))


def fcos_losses(
    logits: list[Tensor],
    reg: list[Tensor],
    ctrness: list[Tensor],
    labels: Tensor,
    reg_targets: Tensor,
    settings: FCOSTrainSettings,
) -> dict[str, Tensor]:
    """FCOS losses (upstream's ``fcos_losses``, one process).

    Args:
        logits, reg, ctrness: :meth:`~.fcos.FCOSHead.forward` outputs, per level
            Tensor[B, C | 4 | 1, Hl, Wl].
        labels, reg_targets: :func:`fcos_targets`.

    Returns:
        ``loss_fcos_cls``: focal loss summed over every location and class, divided by
        ``max(positives, 1)``; ``loss_fcos_loc``: IoU loss of the positives weighted by their
        centerness targets, divided by the sum of those targets; ``loss_fcos_ctr``: centerness
        BCE of the positives, divided by ``max(positives, 1)``.
    """
    num_classes = logits[0].shape[1]
    logits_flat = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, num_classes) for x in logits])
    reg_flat = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, 4) for x in reg])
    ctr_flat = torch.cat([x.reshape(-1) for x in ctrness])
    pos = torch.nonzero(labels != num_classes).squeeze(1)
    num_pos = max(float(pos.numel()), 1.0)
    class_target = torch.zeros_like(logits_flat)
    class_target[pos, labels[pos]] = 1
    cls_loss = sigmoid_focal_loss(logits_flat, class_target, settings.focal_alpha, settings.focal_gamma) / num_pos
    pos_reg_targets = reg_targets[pos]
    ctr_targets = _centerness(pos_reg_targets)
    ctr_norm = max(float(ctr_targets.sum()), 1e-6)
    loc_loss = iou_loss(reg_flat[pos], pos_reg_targets, ctr_targets, settings.loc_loss_type) / ctr_norm
    ctr_loss = F.binary_cross_entropy_with_logits(ctr_flat[pos], ctr_targets, reduction="sum") / num_pos
    return {"loss_fcos_cls": cls_loss, "loss_fcos_loc": loc_loss, "loss_fcos_ctr": ctr_loss}


def match_and_sample(
    proposals: Tensor, gt_boxes: Tensor, gt_classes: Tensor, num_classes: int, settings: ROITrainSettings
) -> tuple[Tensor, Tensor]:
    """Label one image's proposals and sample the ROI-head batch; keep the foreground
    (detectron2's ``label_and_sample_proposals`` with ``subsample_labels``).

    The ground-truth boxes are appended to the proposals (``append_gt``); each proposal takes its
    best-IoU instance, labelled by ``iou_thresholds``/``iou_labels``; at most
    ``batch_size_per_image * positive_fraction`` foreground proposals are drawn at random
    (``torch.randperm``, as upstream). Background samples enter no CenterMask loss, so only the
    foreground is returned.

    Args:
        proposals (Tensor[P, 4]): the image's FCOS proposals (no gradient).
        gt_boxes (Tensor[G, 4]), gt_classes (Tensor[G] int64).

    Returns:
        boxes (Tensor[F, 4]): foreground ROI boxes, in sampled order;
        gt_index (Tensor[F] int64): the instance each one is matched to.
    """
    if settings.append_gt:
        proposals = torch.cat((proposals, gt_boxes.to(proposals.dtype)), dim=0)
    if gt_boxes.shape[0] == 0 or proposals.shape[0] == 0:
        return proposals.new_zeros((0, 4)), torch.zeros((0,), dtype=torch.int64, device=proposals.device)
    quality = box_iou(gt_boxes.to(proposals.dtype), proposals)  # [G, P]
    best, matches = quality.max(dim=0)
    match_labels = torch.ones_like(matches, dtype=torch.int8)
    bounds = settings._bounds
    for label, low, high in zip(settings.iou_labels, bounds[:-1], bounds[1:]):
        match_labels[(best >= low) & (best < high)] = label
    labels = gt_classes[matches].clone()
    labels[match_labels == 0] = num_classes
    labels[match_labels == -1] = -1
    positive = torch.nonzero((labels != -1) & (labels != num_classes)).flatten()
    negative = torch.nonzero(labels == num_classes).flatten()
    num_pos = min(positive.numel(), int(settings.batch_size_per_image * settings.positive_fraction))
    num_neg = min(negative.numel(), settings.batch_size_per_image - num_pos)
    fg = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
    torch.randperm(negative.numel(), device=negative.device)[:num_neg]  # same draws as upstream
    return proposals[fg], matches[fg]


def rasterize_polygons_in_box(polygons: list[np.ndarray], box: np.ndarray, size: int) -> np.ndarray:
    """One instance's polygons cropped to a box and rasterized at ``size x size``
    (detectron2's ``rasterize_polygons_within_box``).

    Args:
        polygons: flat float64 ``[x0, y0, ...]`` arrays in image pixels.
        box (ndarray[4] float32): xyxy.

    Returns:
        ndarray[size, size] bool.
    """
    w, h = box[2] - box[0], box[3] - box[1]
    ratio_h = size / max(h, 0.1)
    ratio_w = size / max(w, 0.1)
    moved = []
    for p in polygons:
        q = np.array(p, dtype=np.float64)
        q[0::2] = (q[0::2] - box[0]) * ratio_w
        q[1::2] = (q[1::2] - box[1]) * ratio_h
        moved.append(q)
    if not moved:
        return np.zeros((size, size), dtype=bool)
    rle = mask_util.merge(mask_util.frPyObjects(moved, size, size))
    return mask_util.decode(rle).astype(bool)


def _polygon_area(polygons: list[np.ndarray]) -> float:
    """Shoelace area summed over an instance's polygons (detectron2's ``PolygonMasks.area``)."""
    total = 0.0
    for p in polygons:
        x, y = np.asarray(p[0::2]), np.asarray(p[1::2])
        total += 0.5 * np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return total


def _area_inside_box(polygons: list[np.ndarray], box: np.ndarray) -> float:
    """Pixels of the instance inside the box: its polygons shifted to the box origin and
    rasterized on an ``int(h) x int(w)`` canvas, one polygon at a time (upstream's MaskIoU
    ``mask_ratios`` numerator)."""
    h, w = int(box[3] - box[1]), int(box[2] - box[0])
    moved = []
    for p in polygons:
        q = np.array(p, dtype=np.float64)
        q[0::2] = q[0::2] - box[0]
        q[1::2] = q[1::2] - box[1]
        moved.append(q)
    if not moved:
        return 0.0
    return float(mask_util.area(mask_util.frPyObjects(moved, h, w)).sum().astype(float))


def mask_targets(
    boxes: Tensor, polygons: list[list[np.ndarray]], size: int, with_ratios: bool
) -> tuple[Tensor, Tensor | None]:
    """Mask targets of foreground ROIs.

    Args:
        boxes (Tensor[F, 4]): ROI boxes.
        polygons: per ROI, its matched instance's polygons.
        size: mask resolution (the mask head's output side, 28).
        with_ratios: also return the MaskIoU head's area ratios.

    Returns:
        masks (Tensor[F, size, size] bool), on ``boxes``'s device;
        ratios (Tensor[F] float64 or None): the instance's area inside the box over its polygon
        area, clipped to [0, 1].
    """
    np_boxes = boxes.detach().cpu().to(torch.float32).numpy()
    masks = [rasterize_polygons_in_box(p, b, size) for p, b in zip(polygons, np_boxes)]
    out = (
        torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, size, size), dtype=torch.bool)
    ).to(boxes.device)
    if not with_ratios:
        return out, None
    inside = torch.tensor([_area_inside_box(p, b) for p, b in zip(polygons, np_boxes)], dtype=torch.float64)
    area = torch.tensor([_polygon_area(p) for p in polygons], dtype=torch.float64)
    return out, (inside / area).clamp(min=0.0, max=1.0).to(boxes.device)


def mask_and_maskiou_losses(
    mask_logits: Tensor, gt_classes: Tensor, gt_masks: Tensor, ratios: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, dict[str, float]]:
    """Mask loss and MaskIoU targets (upstream's ``mask_rcnn_loss`` with ``maskiou_on``).

    Args:
        mask_logits (Tensor[F, C | 1, M, M]): mask head output of the foreground ROIs.
        gt_classes (Tensor[F] int64): their classes; gt_masks (Tensor[F, M, M] bool).
        ratios (Tensor[F] float64 or None): :func:`mask_targets` ratios (None: no MaskIoU head).

    Returns:
        loss_mask (Tensor[]): mean BCE of the class's logits against the targets;
        selected (Tensor[F, 1, M, M]): sigmoid of those logits, the MaskIoU head's input (with
        gradient, as upstream);
        maskiou_targets (Tensor[F] float64 or None): IoU of the thresholded prediction with the
        instance's full mask (its area in the box divided by ``ratios``), detached;
        stats: the accuracy scalars upstream logs.
    """
    num = mask_logits.shape[0]
    if mask_logits.shape[1] == 1:
        selected = mask_logits[:, 0]
    else:
        selected = mask_logits[torch.arange(num, device=mask_logits.device), gt_classes]
    incorrect = (selected > 0.0) != gt_masks
    positives = int(gt_masks.sum())
    stats = {
        "mask_rcnn/accuracy": 1 - int(incorrect.sum()) / max(incorrect.numel(), 1.0),
        "mask_rcnn/false_positive": int((incorrect & ~gt_masks).sum()) / max(gt_masks.numel() - positives, 1.0),
        "mask_rcnn/false_negative": int((incorrect & gt_masks).sum()) / max(positives, 1.0),
    }
    loss = F.binary_cross_entropy_with_logits(selected, gt_masks.to(torch.float32), reduction="mean")
    probs = selected.sigmoid()[:, None]
    if ratios is None:
        return loss, probs, None, stats
    ratios = torch.max(ratios, torch.full_like(ratios, 1e-10))
    pred = selected > 0
    full_area = gt_masks.sum(dim=[1, 2]) / ratios
    overlap = (pred * gt_masks).sum(dim=[1, 2]).float()
    union = pred.sum(dim=[1, 2]) + full_area - overlap
    union = torch.max(union, torch.ones_like(union))
    overlap = torch.max(overlap, torch.zeros_like(overlap))
    return loss, probs, (overlap / union).detach(), stats


def maskiou_loss(pred_maskiou: Tensor, gt_classes: Tensor, targets: Tensor, weight: float) -> Tensor:
    """MaskIoU loss (upstream's ``mask_iou_loss``): half squared error of the class's predicted
    IoU on the ROIs whose target is > 0, averaged over them, times ``weight``.

    Args:
        pred_maskiou (Tensor[F, C]), gt_classes (Tensor[F] int64), targets (Tensor[F] float64).
    """
    if gt_classes.numel() == 0:
        return pred_maskiou.sum() * 0
    pred = pred_maskiou[torch.arange(pred_maskiou.shape[0], device=pred_maskiou.device), gt_classes]
    pos = torch.nonzero(targets > 0.0).squeeze(1)
    if pos.numel() > 0:
        loss = (0.5 * torch.abs(pred[pos] - targets[pos]) ** 2 / pos.shape[0]).sum()
    else:
        loss = (pred * 0.0).sum()
    return weight * loss
