"""CenterMask ROI heads (inference): multi-level RoIAlign pooling, the spatial-attention mask
head and the MaskIoU head.

Parameter names follow upstream centermask2 (``roi_heads.mask_head.mask_fcn1.weight``,
``roi_heads.maskiou_head.maskiou_fc1.weight`` ...). Boxes come from FCOS as fixed-size padded
tensors; padded rows are computed like any other box and zeroed at the end, so every real
row is exactly what upstream computes for it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, UnsupportedError
from .layers import ValidRegion, conv3x3_norm_relu
from .losses import ROITrainSettings, mask_and_maskiou_losses, mask_targets, maskiou_loss, match_and_sample
from .ops.registry import multilevel_roi_align, multilevel_roi_align_reference, requires_autograd

__all__ = [
    "assign_boxes_to_levels_by_ratio",
    "assign_boxes_to_levels_by_area",
    "ROIPooler",
    "SpatialAttention",
    "SpatialAttentionMaskHead",
    "MaskIoUHead",
    "CenterROIHeads",
]


def assign_boxes_to_levels_by_ratio(
    boxes: Tensor, image_areas: Tensor, min_level: int, max_level: int
) -> Tensor:
    """CenterMask's adaptive RoI assignment: ``ceil(max_level - log2(image_area / box_area))``.

    Args:
        boxes (Tensor[M, 4]): xyxy in network-input pixels.
        image_areas (Tensor[M]): area of the (unpadded, resized) image each box belongs to.
        min_level, max_level: pyramid levels available (e.g. 3 and 5).

    Returns:
        Tensor[M] int64: level index relative to ``min_level``.
    """
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.ceil(max_level - torch.log2(image_areas.to(box_areas.dtype) / box_areas + sys.float_info.epsilon))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def assign_boxes_to_levels_by_area(
    boxes: Tensor, min_level: int, max_level: int, canonical_box_size: int = 224, canonical_level: int = 4
) -> Tensor:
    """FPN paper's assignment: ``floor(canonical_level + log2(sqrt(area) / canonical_box_size))``.

    Args:
        boxes (Tensor[M, 4]): xyxy.

    Returns:
        Tensor[M] int64: level index relative to ``min_level``.
    """
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + sys.float_info.epsilon))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """Pools every box from the pyramid level chosen for it.

    Args:
        output_size: pooled resolution (e.g. 14).
        scales: ``1 / stride`` of each input level, finest first (e.g. ``(1/8, 1/16, 1/32)``).
        sampling_ratio: RoIAlign samples per bin side; 0 = adaptive.
        pooler_type: ``"ROIAlignV2"`` (aligned) or ``"ROIAlign"``.
        assign_crit: ``"ratio"`` (CenterMask) or ``"area"`` (FPN).
    """

    def __init__(
        self,
        *,
        output_size: int,
        scales: tuple[float, ...],
        sampling_ratio: int = 0,
        pooler_type: str = "ROIAlignV2",
        assign_crit: str = "ratio",
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if pooler_type not in ("ROIAlignV2", "ROIAlign"):
            raise ConfigError(
                f"MODEL.ROI_MASK_HEAD.POOLER_TYPE={pooler_type!r} is not supported; use 'ROIAlignV2' or 'ROIAlign'"
            )
        if assign_crit not in ("ratio", "area"):
            raise ConfigError(f"MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION must be 'ratio' or 'area', got {assign_crit!r}")
        min_level, max_level = -math.log2(scales[0]), -math.log2(scales[-1])
        if not (math.isclose(min_level, round(min_level)) and math.isclose(max_level, round(max_level))):
            raise ConfigError(f"pooler scales {scales} must be powers of 1/2")
        self.min_level, self.max_level = int(round(min_level)), int(round(max_level))
        if len(scales) != self.max_level - self.min_level + 1:
            raise ConfigError(f"pooler scales {scales} do not form a pyramid")
        self.output_size = int(output_size)
        self.scales = tuple(float(s) for s in scales)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = pooler_type == "ROIAlignV2"
        self.assign_crit = assign_crit
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def assign_levels(self, boxes: Tensor, image_areas: Tensor) -> Tensor:
        """boxes (Tensor[M, 4]), image_areas (Tensor[M]) -> level offsets Tensor[M] int64."""
        if self.assign_crit == "ratio":
            return assign_boxes_to_levels_by_ratio(boxes, image_areas, self.min_level, self.max_level)
        return assign_boxes_to_levels_by_area(
            boxes, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )

    def forward(
        self,
        features: list[Tensor],
        boxes: Tensor,
        image_sizes: Tensor,
        regions: list[ValidRegion | None] | None = None,
    ) -> Tensor:
        """
        Args:
            features: per level Tensor[B, C, Hl, Wl], finest first.
            boxes (Tensor[B, K, 4]): xyxy in network-input pixels.
            image_sizes (Tensor[B, 2]): valid (h, w) of each image.
            regions: per level, the part of each image's map upstream's tensor would hold
                (:mod:`.layers.padding`); RoIAlign's border rules then apply at its edge.

        Returns:
            Tensor[B * K, C, R, R], rows in image-major order.
        """
        b, k, _ = boxes.shape
        flat_boxes = boxes.reshape(b * k, 4)
        batch_idx = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None].expand(b, k).reshape(b * k, 1)
        rois = torch.cat((batch_idx, flat_boxes), dim=1)
        areas = (image_sizes[:, 0] * image_sizes[:, 1]).to(torch.float32)
        stacked = None
        if regions is not None and all(r is not None for r in regions):
            stacked = torch.stack([r.sizes for r in regions])
        return self.pool(features, rois, areas[:, None].expand(b, k).reshape(b * k), stacked)

    def pool(self, features: list[Tensor], rois: Tensor, image_areas: Tensor, regions: Tensor | None = None) -> Tensor:
        """Pool any list of boxes (training uses it with the sampled proposals of every image).

        Args:
            features: per level Tensor[B, C, Hl, Wl], finest first.
            rois (Tensor[M, 5]): ``(batch_index, x1, y1, x2, y2)`` in network-input pixels.
            image_areas (Tensor[M] float32): valid area (h * w) of each box's image.
            regions (Tensor[L, B, 2] int64 or None): see :func:`~.ops.registry.multilevel_roi_align`.

        Returns:
            Tensor[M, C, R, R], differentiable in ``features`` when they require grad.
        """
        if len(features) == 1:
            levels = torch.zeros((rois.shape[0],), dtype=torch.int64, device=rois.device)
        else:
            levels = self.assign_levels(rois[:, 1:], image_areas)
        op = multilevel_roi_align_reference if requires_autograd(*features) else multilevel_roi_align
        return op(features, rois, levels, self.output_size, list(self.scales), self.sampling_ratio, self.aligned, regions)


class SpatialAttention(nn.Module):
    """Spatial attention: ``x * sigmoid(conv3x3([mean_c(x), max_c(x)]))``."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in (3, 7):
            raise ConfigError(f"spatial attention kernel size must be 3 or 7, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[M, C, R, R]) -> Tensor[M, C, R, R]."""
        avg = torch.mean(x, dim=1, keepdim=True)
        mx = torch.amax(x, dim=1, keepdim=True)
        return x * torch.sigmoid(self.conv(torch.cat((avg, mx), dim=1)))


class SpatialAttentionMaskHead(nn.Module):
    """CenterMask's SAG-Mask head: ``num_conv`` 3x3 convs + ReLU, spatial attention,
    2x deconv + ReLU, 1x1 per-class predictor.

    Args:
        in_channels: pooled feature channels.
        conv_dim: channels of the convs.
        num_conv: number of 3x3 convs.
        num_classes: mask classes (1 when class-agnostic).
        norm: '' (none), 'GN' or 'BN'.
    """

    def __init__(self, *, in_channels: int, conv_dim: int, num_conv: int, num_classes: int, norm: str = "") -> None:
        super().__init__()
        self.num_conv = num_conv
        for k in range(num_conv):
            conv = conv3x3_norm_relu(in_channels if k == 0 else conv_dim, conv_dim, norm)
            self.add_module(f"mask_fcn{k + 1}", conv)
        self.spatialAtt = SpatialAttention()
        self.deconv = nn.ConvTranspose2d(conv_dim if num_conv > 0 else in_channels, conv_dim, 2, stride=2, padding=0)
        self.predictor = nn.Conv2d(conv_dim, num_classes, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[M, C, R, R]) -> mask logits Tensor[M, num_classes, 2R, 2R]."""
        for k in range(self.num_conv):
            x = getattr(self, f"mask_fcn{k + 1}")(x)
        x = self.spatialAtt(x)
        x = F.relu(self.deconv(x))
        return self.predictor(x)


class MaskIoUHead(nn.Module):
    """Predicts the IoU of each predicted mask with its (unknown) ground truth, per class.

    Input: pooled features (Tensor[M, C, R, R]) concatenated with the max-pooled predicted mask.
    The last conv has stride 2, then three fully connected layers.
    """

    def __init__(self, *, in_channels: int, conv_dim: int, num_conv: int, resolution: int, num_classes: int) -> None:
        super().__init__()
        self.num_conv = num_conv
        for k in range(num_conv):
            conv = conv3x3_norm_relu(in_channels + 1 if k == 0 else conv_dim, conv_dim,
                                     stride=2 if k + 1 == num_conv else 1)
            self.add_module(f"maskiou_fcn{k + 1}", conv)
        out_res = resolution // 2
        self.maskiou_fc1 = nn.Linear(conv_dim * out_res * out_res, 1024)
        self.maskiou_fc2 = nn.Linear(1024, 1024)
        self.maskiou = nn.Linear(1024, num_classes)
        self.pooling = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, features: Tensor, masks: Tensor) -> Tensor:
        """
        Args:
            features (Tensor[M, C, R, R]): pooled features.
            masks (Tensor[M, 1, 2R, 2R]): predicted mask probabilities of the predicted class.

        Returns:
            Tensor[M, num_classes]: predicted mask IoU per class.
        """
        x = torch.cat((features, self.pooling(masks)), dim=1)
        for k in range(self.num_conv):
            x = getattr(self, f"maskiou_fcn{k + 1}")(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.maskiou_fc1(x))
        x = F.relu(self.maskiou_fc2(x))
        return self.maskiou(x)


class CenterROIHeads(nn.Module):
    """Mask and MaskIoU branches run on the FCOS detections.

    Args:
        in_features: FPN levels pooled from, e.g. ``["p3", "p4", "p5"]``.
        mask_pooler, mask_head: pooling and mask head.
        maskiou_head: optional; without it ``mask_scores`` equal the box scores.
        num_classes: foreground classes (``MODEL.ROI_HEADS.NUM_CLASSES``).
        train: the training keys (:class:`~.losses.ROITrainSettings`).
    """

    def __init__(
        self,
        *,
        in_features: list[str],
        mask_pooler: ROIPooler,
        mask_head: SpatialAttentionMaskHead,
        maskiou_head: MaskIoUHead | None = None,
        num_classes: int = 80,
        train: ROITrainSettings | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.train_settings = train or ROITrainSettings()
        self.in_features = list(in_features)
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.maskiou_head = maskiou_head

    @classmethod
    def from_config(cls, cfg: Any, feature_strides: dict[str, int], feature_channels: dict[str, int]) -> CenterROIHeads:
        m = cfg.MODEL
        if not m.MASK_ON:
            raise UnsupportedError("MODEL.MASK_ON=False is not supported: CenterMask2 models predict masks")
        if m.KEYPOINT_ON:
            raise UnsupportedError("MODEL.KEYPOINT_ON=True is not supported by this toolkit")
        in_features = list(m.ROI_HEADS.IN_FEATURES)
        missing = [f for f in in_features if f not in feature_strides]
        if missing:
            raise ConfigError(
                f"MODEL.ROI_HEADS.IN_FEATURES names {missing}, which the backbone does not produce "
                f"(it produces {sorted(feature_strides)})"
            )
        channels = {feature_channels[f] for f in in_features}
        if len(channels) != 1:
            raise ConfigError(f"MODEL.ROI_HEADS.IN_FEATURES levels must have equal channels, got {channels}")
        in_channels = channels.pop()
        res = m.ROI_MASK_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=res,
            scales=tuple(1.0 / feature_strides[f] for f in in_features),
            sampling_ratio=m.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=m.ROI_MASK_HEAD.POOLER_TYPE,
            assign_crit=m.ROI_MASK_HEAD.ASSIGN_CRITERION,
        )
        if m.ROI_MASK_HEAD.NAME != "SpatialAttentionMaskHead":
            raise ConfigError(
                f"MODEL.ROI_MASK_HEAD.NAME={m.ROI_MASK_HEAD.NAME!r} is not supported; "
                "CenterMask uses 'SpatialAttentionMaskHead'"
            )
        num_classes = m.ROI_HEADS.NUM_CLASSES
        mask_head = SpatialAttentionMaskHead(
            in_channels=in_channels,
            conv_dim=m.ROI_MASK_HEAD.CONV_DIM,
            num_conv=m.ROI_MASK_HEAD.NUM_CONV,
            num_classes=1 if m.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else num_classes,
            norm=m.ROI_MASK_HEAD.NORM,
        )
        maskiou_head = None
        if m.MASKIOU_ON:
            maskiou_head = MaskIoUHead(
                in_channels=m.ROI_MASK_HEAD.CONV_DIM,
                conv_dim=m.ROI_MASKIOU_HEAD.CONV_DIM,
                num_conv=m.ROI_MASKIOU_HEAD.NUM_CONV,
                resolution=res,
                num_classes=num_classes,
            )
        h = m.ROI_HEADS
        train = ROITrainSettings(
            iou_thresholds=tuple(float(v) for v in h.IOU_THRESHOLDS),
            iou_labels=tuple(int(v) for v in h.IOU_LABELS),
            batch_size_per_image=int(h.BATCH_SIZE_PER_IMAGE),
            positive_fraction=float(h.POSITIVE_FRACTION),
            append_gt=bool(h.PROPOSAL_APPEND_GT),
            maskiou_weight=float(m.MASKIOU_LOSS_WEIGHT),
        )
        return cls(
            in_features=in_features,
            mask_pooler=pooler,
            mask_head=mask_head,
            maskiou_head=maskiou_head,
            num_classes=num_classes,
            train=train,
        )

    def training_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: Tensor,
        gt_boxes: list[Tensor],
        gt_classes: list[Tensor],
        gt_polygons: list[list[list[np.ndarray]]],
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Mask and MaskIoU losses on the sampled foreground proposals (upstream's
        ``CenterROIHeads.forward`` in training).

        Args:
            features: FPN outputs, each Tensor[B, C, Hl, Wl].
            proposals: per image Tensor[P, 4] (:meth:`~.fcos.FCOS.training_losses`).
            image_sizes (Tensor[B, 2] int64): valid (h, w) of each image.
            gt_boxes, gt_classes, gt_polygons: per image the instances' boxes (Tensor[G, 4]),
                classes (Tensor[G] int64) and polygons (per instance a list of flat float64
                arrays), in network-input pixels.

        Returns:
            losses: ``loss_mask`` and, with a MaskIoU head, ``loss_maskiou``;
            stats: foreground/background sample counts and mask accuracy, as upstream logs them.
        """
        rois, classes, polys, areas = [], [], [], []
        for i, (props, boxes, cls_i, poly_i) in enumerate(zip(proposals, gt_boxes, gt_classes, gt_polygons)):
            fg_boxes, gt_index = match_and_sample(props, boxes, cls_i, self.num_classes, self.train_settings)
            if fg_boxes.shape[0] == 0:
                continue
            rois.append(torch.cat((fg_boxes.new_full((fg_boxes.shape[0], 1), float(i)), fg_boxes), dim=1))
            classes.append(cls_i[gt_index])
            polys.extend(poly_i[j] for j in gt_index.tolist())
            area = (image_sizes[i, 0] * image_sizes[i, 1]).to(torch.float32)
            areas.append(area.expand(fg_boxes.shape[0]))
        feats = [features[f] for f in self.in_features]
        if not rois:  # no foreground anywhere: zero losses that still reach every head parameter
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            losses = {"loss_mask": zero}
            if self.maskiou_head is not None:
                losses["loss_maskiou"] = zero
            return losses, {"roi_head/num_fg_samples": 0.0}
        all_rois = torch.cat(rois)
        gt_cls = torch.cat(classes)
        pooled = self.mask_pooler.pool(feats, all_rois, torch.cat(areas).to(all_rois.device))
        logits = self.mask_head(pooled)
        masks, ratios = mask_targets(all_rois[:, 1:], polys, logits.shape[-1], self.maskiou_head is not None)
        loss_mask, probs, iou_targets, stats = mask_and_maskiou_losses(logits, gt_cls, masks, ratios)
        losses = {"loss_mask": loss_mask}
        if self.maskiou_head is not None:
            pred = self.maskiou_head(pooled, probs)
            losses["loss_maskiou"] = maskiou_loss(pred, gt_cls, iou_targets, self.train_settings.maskiou_weight)
        stats["roi_head/num_fg_samples"] = float(all_rois.shape[0]) / len(proposals)
        return losses, stats

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: Tensor,
        scores: Tensor,
        classes: Tensor,
        valid: Tensor,
        image_sizes: Tensor,
        regions: dict[str, ValidRegion | None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            features: FPN outputs, each Tensor[B, C, Hl, Wl].
            regions: FPN level regions (:mod:`.layers.padding`), or None.
            boxes (Tensor[B, K, 4]), scores (Tensor[B, K]), classes (Tensor[B, K] int64),
            valid (Tensor[B, K] bool): FCOS detections, padded.
            image_sizes (Tensor[B, 2] int64): valid (h, w) of each image.

        Returns:
            masks (Tensor[B, K, M, M]): mask probabilities of the predicted class (0 on padding rows),
            mask_scores (Tensor[B, K]): ``scores * maskiou[class]`` (``scores`` without a MaskIoU head).
        """
        b, k = scores.shape
        level_regions = [regions[f] for f in self.in_features] if regions is not None else None
        pooled = self.mask_pooler([features[f] for f in self.in_features], boxes, image_sizes, level_regions)
        logits = self.mask_head(pooled)  # [B*K, C or 1, M, M]
        flat_classes = classes.reshape(b * k)
        if logits.shape[1] == 1:
            selected = logits[:, 0]
        else:
            selected = torch.gather(
                logits, 1, flat_classes[:, None, None, None].expand(b * k, 1, logits.shape[2], logits.shape[3])
            )[:, 0]
        probs = selected.sigmoid()  # [B*K, M, M]
        if self.maskiou_head is not None:
            maskiou = self.maskiou_head(pooled, probs[:, None])
            iou = torch.gather(maskiou, 1, flat_classes[:, None])[:, 0].reshape(b, k)
            mask_scores = scores * iou
        else:
            mask_scores = scores
        zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
        masks = torch.where(valid[:, :, None, None], probs.reshape(b, k, probs.shape[1], probs.shape[2]), zero)
        return masks, torch.where(valid, mask_scores, zero)
