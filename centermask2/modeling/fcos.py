"""FCOS: the one-stage detector CenterMask uses as its box proposal generator (inference only).

Parameter names follow upstream centermask2 (``fcos_head.cls_tower.0.weight`` ...), so official
checkpoints load unchanged. Decoding reproduces ``FCOSOutputs.predict_proposals``:

1. per level, candidates are locations/classes whose class *probability* exceeds
   ``INFERENCE_TH_TEST`` (centerness is not part of the threshold unless ``THRESH_WITH_CTR``);
2. per level and image, at most ``PRE_NMS_TOPK_TEST`` candidates ranked by ``cls * ctrness``;
3. box score ``sqrt(cls * ctrness)``, class-aware NMS at ``NMS_TH``;
4. the best ``POST_NMS_TOPK_TEST`` detections per image.

Everything is batched and returns fixed-size, zero-padded tensors so that the same code path
runs eagerly and in an exported graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, UnsupportedError
from .layers import ValidRegion, run
from .losses import FCOSTrainSettings, fcos_losses, fcos_targets
from .ops.registry import padded_batched_nms

__all__ = ["Scale", "FCOSHead", "FCOS", "compute_locations"]


class Scale(nn.Module):
    """Learnable scalar multiplier (one per pyramid level)."""

    pointwise = True  # see centermask2.modeling.layers.padding

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """Shared classification / box towers applied to every pyramid level.

    Args:
        in_channels: channels of every FPN level.
        num_classes: foreground classes.
        num_levels: number of pyramid levels (one ``Scale`` each).
        num_cls_convs, num_box_convs, num_share_convs: tower depths.
        norm: ``"GN"`` (GroupNorm with 32 groups) or ``"none"``.
        use_scale: learn a per-level scale on the box regression.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        use_scale: bool = True,
    ) -> None:
        super().__init__()
        if norm not in ("GN", "none", ""):
            raise ConfigError(f"MODEL.FCOS.NORM must be 'GN' or 'none', got {norm!r}")
        self.num_classes = num_classes

        def tower(num_convs: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers.append(nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=True))
                if norm == "GN":
                    layers.append(nn.GroupNorm(32, in_channels))
                layers.append(nn.ReLU())
            return nn.Sequential(*layers)

        self.cls_tower = tower(num_cls_convs)
        self.bbox_tower = tower(num_box_convs)
        self.share_tower = tower(num_share_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None

    def forward(
        self, features: list[Tensor], regions: list[ValidRegion | None] | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """
        Args:
            features: per level, Tensor[B, C, Hl, Wl].
            regions: per level, the valid part of each image (:mod:`.layers.padding`), or None.

        Returns:
            logits: per level Tensor[B, num_classes, Hl, Wl] (class logits),
            reg: per level Tensor[B, 4, Hl, Wl] (l, t, r, b distances in units of the level stride, >= 0),
            ctrness: per level Tensor[B, 1, Hl, Wl] (centerness logits).
        """
        logits, reg, ctrness = [], [], []
        for level, feature in enumerate(features):
            region = regions[level] if regions is not None else None
            feature = run(self.share_tower, feature, region)
            cls_feat = run(self.cls_tower, feature, region)
            box_feat = run(self.bbox_tower, feature, region)
            if region is not None:  # read by the 3x3 predictors
                cls_feat = region.fill_outside(cls_feat)
                box_feat = region.fill_outside(box_feat)
            logits.append(self.cls_logits(cls_feat))
            ctrness.append(self.ctrness(box_feat))
            r = self.bbox_pred(box_feat)
            if self.scales is not None:
                r = self.scales[level](r)
            # improved FCOS: ReLU instead of exp on the distances
            reg.append(F.relu(r))
        return logits, reg, ctrness


def compute_locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Image-plane centres of the feature-map cells of one level.

    Returns:
        Tensor[height * width, 2]: ``(x, y)`` = ``(j * stride + stride // 2, i * stride + stride // 2)``,
        row-major over the map.
    """
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride
    grid_x = xs[None, :].expand(height, width)  # meshgrid(ys, xs, indexing="ij"), in plain ops
    grid_y = ys[:, None].expand(height, width)
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1) + (stride // 2)


class FCOS(nn.Module):
    """FCOS head plus inference decoding.

    Args:
        head: the :class:`FCOSHead`.
        in_features: FPN levels to use, e.g. ``["p3", "p4", "p5", "p6", "p7"]``.
        strides: stride of each level, e.g. ``[8, 16, 32, 64, 128]``.
        score_thresh: ``MODEL.FCOS.INFERENCE_TH_TEST``.
        pre_nms_topk: ``MODEL.FCOS.PRE_NMS_TOPK_TEST`` (per level and image).
        nms_thresh: ``MODEL.FCOS.NMS_TH``.
        post_nms_topk: ``MODEL.FCOS.POST_NMS_TOPK_TEST``; the number of output rows.
        thresh_with_ctr: ``MODEL.FCOS.THRESH_WITH_CTR``.
        train: the training keys (:class:`~.losses.FCOSTrainSettings`).
    """

    def __init__(
        self,
        *,
        head: FCOSHead,
        in_features: list[str],
        strides: list[int],
        score_thresh: float = 0.05,
        pre_nms_topk: int = 1000,
        nms_thresh: float = 0.6,
        post_nms_topk: int = 100,
        thresh_with_ctr: bool = False,
        train: FCOSTrainSettings | None = None,
    ) -> None:
        super().__init__()
        if len(in_features) != len(strides):
            raise ConfigError(
                f"MODEL.FCOS.IN_FEATURES {list(in_features)} and MODEL.FCOS.FPN_STRIDES {list(strides)} "
                "must have the same length"
            )
        self.fcos_head = head
        self.in_features = list(in_features)
        self.strides = [int(s) for s in strides]
        self.score_thresh = float(score_thresh)
        self.pre_nms_topk = int(pre_nms_topk)
        self.nms_thresh = float(nms_thresh)
        self.post_nms_topk = int(post_nms_topk)
        self.thresh_with_ctr = bool(thresh_with_ctr)
        self.train_settings = train or FCOSTrainSettings()

    @classmethod
    def from_config(cls, cfg: Any, in_channels: int) -> FCOS:
        f = cfg.MODEL.FCOS
        head = FCOSHead(
            in_channels=in_channels,
            num_classes=f.NUM_CLASSES,
            num_levels=len(f.FPN_STRIDES),
            num_cls_convs=f.NUM_CLS_CONVS,
            num_box_convs=f.NUM_BOX_CONVS,
            num_share_convs=f.NUM_SHARE_CONVS,
            norm=f.NORM,
            use_scale=f.USE_SCALE,
        )
        if f.USE_DEFORMABLE:
            raise UnsupportedError(
                "MODEL.FCOS.USE_DEFORMABLE=True: deformable convolution is not supported; "
                "use a config without deformable FCOS towers"
            )
        return cls(
            head=head,
            in_features=list(f.IN_FEATURES),
            strides=list(f.FPN_STRIDES),
            score_thresh=f.INFERENCE_TH_TEST,
            pre_nms_topk=f.PRE_NMS_TOPK_TEST,
            nms_thresh=f.NMS_TH,
            post_nms_topk=f.POST_NMS_TOPK_TEST,
            thresh_with_ctr=f.THRESH_WITH_CTR,
            train=FCOSTrainSettings(
                focal_alpha=float(f.LOSS_ALPHA),
                focal_gamma=float(f.LOSS_GAMMA),
                center_sample=bool(f.CENTER_SAMPLE),
                pos_radius=float(f.POS_RADIUS),
                sizes_of_interest=tuple(float(v) for v in f.SIZES_OF_INTEREST),
                loc_loss_type=str(f.LOC_LOSS_TYPE),
                score_thresh=float(f.INFERENCE_TH_TRAIN),
                pre_nms_topk=int(f.PRE_NMS_TOPK_TRAIN),
                post_nms_topk=int(f.POST_NMS_TOPK_TRAIN),
            ),
        )

    @property
    def max_detections(self) -> int:
        """Number of output rows per image."""
        if self.post_nms_topk > 0:
            return self.post_nms_topk
        return self.pre_nms_topk * len(self.strides)

    def forward(
        self, features: dict[str, Tensor], regions: dict[str, ValidRegion | None] | None = None
    ) -> dict[str, Tensor]:
        """Detect boxes.

        Args:
            features: FPN outputs, each Tensor[B, C, Hl, Wl].
            regions: FPN level regions (:mod:`.layers.padding`): locations outside a level's region
                give no candidates and padding has no effect on the others. None: no padding to
                ignore.

        Returns:
            dict with
              ``boxes`` Tensor[B, K, 4] xyxy in network-input pixels (not clipped, as upstream),
              ``scores`` Tensor[B, K] ``sqrt(cls * ctrness)``, ``classes`` Tensor[B, K] int64,
              ``valid`` Tensor[B, K] bool; rows sorted by score, invalid rows zero.
        """
        feats = [features[name] for name in self.in_features]
        level_regions = [regions[name] for name in self.in_features] if regions is not None else None
        logits, reg, ctrness = self.fcos_head(feats, level_regions)
        return self.decode(
            logits, reg, ctrness, level_regions, self.score_thresh, self.pre_nms_topk, self.max_detections
        )

    def training_losses(
        self, features: dict[str, Tensor], gt_boxes: list[Tensor], gt_classes: list[Tensor]
    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """FCOS losses and the proposals upstream's training passes to the ROI heads.

        Args:
            features: FPN outputs, each Tensor[B, C, Hl, Wl] (the whole padded batch: upstream
                trains on it as it is).
            gt_boxes: per image Tensor[G, 4] xyxy float32 in network-input pixels;
            gt_classes: per image Tensor[G] int64.

        Returns:
            losses: ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr``
            (:func:`~.losses.fcos_losses`);
            proposals: per image Tensor[P, 4] (no gradient, not clipped), decoded with the
            ``*_TRAIN`` thresholds, best first.
        """
        feats = [features[name] for name in self.in_features]
        logits, reg, ctrness = self.fcos_head(feats)
        locations = [
            compute_locations(x.shape[-2], x.shape[-1], stride, x.device) for x, stride in zip(logits, self.strides)
        ]
        s = self.train_settings
        labels, reg_targets = fcos_targets(
            locations, self.strides, gt_boxes, gt_classes, self.fcos_head.num_classes, s
        )
        losses = fcos_losses(logits, reg, ctrness, labels, reg_targets, s)
        k = s.post_nms_topk if s.post_nms_topk > 0 else s.pre_nms_topk * len(self.strides)
        with torch.no_grad():
            det = self.decode(
                [x.detach() for x in logits], [x.detach() for x in reg], [x.detach() for x in ctrness],
                None, s.score_thresh, s.pre_nms_topk, k,
            )
        proposals = [boxes[valid] for boxes, valid in zip(det["boxes"], det["valid"])]
        return losses, proposals

    def decode(
        self,
        logits: list[Tensor],
        reg: list[Tensor],
        ctrness: list[Tensor],
        level_regions: list[ValidRegion | None] | None,
        score_thresh: float,
        pre_nms_topk: int,
        max_detections: int,
    ) -> dict[str, Tensor]:
        """Head outputs (see :meth:`FCOSHead.forward`) to detections, as :meth:`forward` returns
        them; training decodes its proposals with the ``*_TRAIN`` thresholds."""
        cand_boxes, cand_scores, cand_classes, cand_valid = [], [], [], []
        for level, stride in enumerate(self.strides):
            b, c, h, w = logits[level].shape
            locations = compute_locations(h, w, stride, logits[level].device)
            cls_prob = logits[level].permute(0, 2, 3, 1).reshape(b, h * w * c).sigmoid()
            ctr = ctrness[level].permute(0, 2, 3, 1).reshape(b, h * w).sigmoid()
            ctr = ctr[:, :, None].expand(b, h * w, c).reshape(b, h * w * c)
            dist = reg[level].permute(0, 2, 3, 1).reshape(b, h * w, 4) * stride
            if self.thresh_with_ctr:
                cls_prob = cls_prob * ctr
                candidate = cls_prob > score_thresh
                score = cls_prob
            else:
                candidate = cls_prob > score_thresh
                score = cls_prob * ctr
            if level_regions is not None and level_regions[level] is not None:
                inside = level_regions[level].inside(h, w).reshape(b, h * w, 1).expand(b, h * w, c)
                candidate = candidate & inside.reshape(b, h * w * c)
            k = torch.sym_min(pre_nms_topk, h * w * c)
            ranked = torch.where(candidate, score, torch.full_like(score, -1.0))
            top_score, top_idx = ranked.topk(k, dim=1, sorted=True)
            valid = torch.gather(candidate, 1, top_idx)
            loc_idx = torch.div(top_idx, c, rounding_mode="floor")
            classes = top_idx - loc_idx * c
            loc = locations[loc_idx]  # [B, k, 2]
            d = torch.gather(dist, 1, loc_idx[:, :, None].expand(b, k, 4))
            boxes = torch.stack(
                (loc[..., 0] - d[..., 0], loc[..., 1] - d[..., 1], loc[..., 0] + d[..., 2], loc[..., 1] + d[..., 3]),
                dim=2,
            )
            cand_boxes.append(boxes)
            cand_scores.append(torch.sqrt(top_score.clamp(min=0)))
            cand_classes.append(classes)
            cand_valid.append(valid)
        boxes = torch.cat(cand_boxes, dim=1)
        scores = torch.cat(cand_scores, dim=1)
        classes = torch.cat(cand_classes, dim=1)
        valid = torch.cat(cand_valid, dim=1)
        return self._select(boxes, scores, classes, valid, max_detections)

    def _select(
        self, boxes: Tensor, scores: Tensor, classes: Tensor, valid: Tensor, max_detections: int
    ) -> dict[str, Tensor]:
        """Class-aware NMS per image, then the top ``max_detections``; fixed-size outputs.

        Args:
            boxes (Tensor[B, N, 4]), scores (Tensor[B, N]), classes (Tensor[B, N] int64),
            valid (Tensor[B, N] bool): candidates of every level.
        """
        b = scores.shape[0]
        # always append max_detections invalid rows so the final top-k is defined for any input size
        pad = max_detections
        boxes = torch.cat((boxes, boxes.new_zeros((b, pad, 4))), dim=1)
        scores = torch.cat((scores, scores.new_zeros((b, pad))), dim=1)
        classes = torch.cat((classes, classes.new_zeros((b, pad))), dim=1)
        valid = torch.cat((valid, valid.new_zeros((b, pad))), dim=1)
        kept = padded_batched_nms(boxes, scores, classes, valid, self.nms_thresh, self.fcos_head.num_classes)
        k = max_detections
        ranked = torch.where(kept, scores, torch.full_like(scores, -1.0))
        top_score, top_idx = ranked.topk(k, dim=1, sorted=True)
        out_valid = torch.gather(kept, 1, top_idx)
        out_boxes = torch.gather(boxes, 1, top_idx[:, :, None].expand(b, k, 4))
        out_classes = torch.gather(classes, 1, top_idx)
        zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
        result = {
            "boxes": torch.where(out_valid[:, :, None], out_boxes, zero),
            "scores": torch.where(out_valid, top_score, zero),
            "classes": torch.where(out_valid, out_classes, torch.zeros_like(out_classes)),
            "valid": out_valid,
        }
        return result
