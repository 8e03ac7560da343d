"""The whole CenterMask network: backbone + FPN, FCOS, CenterROIHeads.

Tensors in, tensors out: :meth:`CenterMask.forward` takes a normalized, zero-padded batch and
the valid size of every image and returns fixed-size, zero-padded detections in network-input
pixels. Resizing back to the original image and mask pasting are separate pure functions
(:mod:`centermask2.modeling.postprocessing`), as in detectron2.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from ..contract import OUTPUT_NAMES
from ..errors import InputError
from .fcos import FCOS
from .layers import ValidRegion, normalize
from .roi_heads import CenterROIHeads

__all__ = ["CenterMask", "OUTPUT_NAMES"]

logger = logging.getLogger(__name__)


class CenterMask(nn.Module):
    """CenterMask instance segmentation: inference (:meth:`forward`) and upstream's training
    losses (:meth:`training_losses`).

    Args:
        backbone: returns FPN features ``{"p3": Tensor[B, C, H/8, W/8], ...}``; must expose
            ``size_divisibility``, ``out_feature_strides`` and ``out_feature_channels``.
        proposal_generator: :class:`FCOS`.
        roi_heads: :class:`CenterROIHeads`.
        pixel_mean, pixel_std: per-channel normalization in ``input_format`` channel order.
        input_format: ``"BGR"`` or ``"RGB"``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: FCOS,
        roi_heads: CenterROIHeads,
        pixel_mean: list[float],
        pixel_std: list[float],
        input_format: str = "BGR",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise InputError(f"MODEL.PIXEL_MEAN/PIXEL_STD need 3 values, got {pixel_mean} / {pixel_std}")
        # not part of checkpoints (detectron2 registers them non-persistent too)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)
        self.input_format = input_format

    @property
    def size_divisibility(self) -> int:
        """Padded input height and width must be multiples of this."""
        return int(getattr(self.backbone, "size_divisibility", 0) or 1)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Keys of :meth:`forward`'s result, in order."""
        return OUTPUT_NAMES

    @property
    def max_detections(self) -> int:
        """Output rows per image (``MODEL.FCOS.POST_NMS_TOPK_TEST``)."""
        return self.proposal_generator.max_detections

    def normalize(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        """Raw pixels to network input: ``(x - mean) / std`` inside each image, 0 in the padding.

        Args:
            images (Tensor[B, 3, H, W]): raw pixel values (uint8 or float) in ``input_format``.
            image_sizes (Tensor[B, 2] int64): valid (h, w); pixels outside are padding.

        Returns:
            Tensor[B, 3, H, W] float32, exactly what upstream feeds its backbone for the batch
            (:func:`centermask2.modeling.layers.normalize`).
        """
        return normalize(images, image_sizes, self.pixel_mean, self.pixel_std)

    def needs_padding_invariance(self, images: Tensor, image_sizes: Tensor) -> bool:
        """Whether any image of the batch is padded beyond its own multiple of
        :attr:`size_divisibility` (eager only: it reads the sizes). When not, ``forward`` with
        ``ignore_padding=False`` computes the same and is cheaper."""
        region = ValidRegion.for_input(image_sizes, self.size_divisibility).sizes
        full = torch.tensor([images.shape[-2], images.shape[-1]], device=region.device)
        return bool((region != full).any())

    def forward(
        self, images: Tensor, image_sizes: Tensor, ignore_padding: bool = True, full_masks: bool = False
    ) -> dict[str, Tensor]:
        """Run the network.

        Args:
            images (Tensor[B, 3, H, W] float32): normalized images, zero-padded at the bottom/right;
                H and W multiples of :attr:`size_divisibility`.
            image_sizes (Tensor[B, 2] int64): valid (h, w) of each image (the resized size).
            ignore_padding: every image gets exactly what upstream computes for it alone, padded
                only to a multiple of :attr:`size_divisibility`, however large the tensor and
                whatever else is in the batch (:mod:`.layers.padding`). False: the padding is part of
                the input, as when upstream runs on the padded tensor (cheaper; the same when
                :meth:`needs_padding_invariance` is False).
            full_masks: how the padding masks are applied (the same numbers): in each tensor's
                shape, for exported graphs (ONNX Runtime keeps its blocked layout), or broadcast,
                cheaper eagerly (:class:`~.layers.ValidRegion`).

        Returns:
            dict (keys :data:`OUTPUT_NAMES`), K = :attr:`max_detections`:
              ``boxes`` Tensor[B, K, 4] xyxy float32 in network-input pixels,
              ``scores`` Tensor[B, K], ``classes`` Tensor[B, K] int64 (0-based contiguous),
              ``masks`` Tensor[B, K, 28, 28] probabilities of the predicted class,
              ``mask_scores`` Tensor[B, K], ``num_detections`` Tensor[B] int64.
            Rows are sorted by score; rows past ``num_detections`` are zero.
        """
        features, regions = self._features(images, image_sizes, ignore_padding, full_masks)
        return self._instances(features, regions, image_sizes)

    def _features(
        self, images: Tensor, image_sizes: Tensor, ignore_padding: bool, full_masks: bool
    ) -> tuple[dict[str, Tensor], dict[str, ValidRegion | None] | None]:
        """Backbone features and, with ``ignore_padding``, the region of each (else None)."""
        region = ValidRegion.for_input(image_sizes, self.size_divisibility, full_masks) if ignore_padding else None
        features, regions = self.backbone.forward_with_regions(images, region)
        return features, (None if region is None else regions)

    def _instances(
        self, features: dict[str, Tensor], regions: dict[str, ValidRegion | None] | None, image_sizes: Tensor
    ) -> dict[str, Tensor]:
        """The detection outputs (:data:`OUTPUT_NAMES`) from the features (see :meth:`forward`)."""
        det = self.proposal_generator(features, regions)
        masks, mask_scores = self.roi_heads(
            features, det["boxes"], det["scores"], det["classes"], det["valid"], image_sizes, regions
        )
        return {
            "boxes": det["boxes"],
            "scores": det["scores"],
            "classes": det["classes"],
            "masks": masks,
            "mask_scores": mask_scores,
            "num_detections": det["valid"].sum(dim=1).to(torch.int64),
        }


    def training_losses(
        self,
        images: Tensor,
        image_sizes: Tensor,
        targets: list[dict[str, Any]],
        stats: dict[str, float] | None = None,
    ) -> dict[str, Tensor]:
        """The loss terms of upstream's training forward, keyed and ordered as upstream's dict.

        Runs on the padded batch as it is (upstream trains that way: the padding of the smaller
        images is part of their input). Call it with the model in ``train()`` mode; frozen
        parameters (``MODEL.BACKBONE.FREEZE_AT``, FrozenBN) get no gradient.

        Args:
            images (Tensor[B, 3, H, W] float32): normalized, zero-padded batch
                (:meth:`normalize`); H and W multiples of :attr:`size_divisibility`.
            image_sizes (Tensor[B, 2] int64): valid (h, w) of each image.
            targets: per image a dict with ``boxes`` (Tensor[G, 4] float32 xyxy, network-input
                pixels), ``classes`` (Tensor[G] int64, contiguous) and ``polygons`` (per instance
                a list of flat float64 ``[x0, y0, x1, y1, ...]`` arrays, network-input pixels).
            stats: if given, filled with the scalars upstream logs (sample counts, mask accuracy).

        Returns:
            ``loss_mask``, ``loss_maskiou`` (with a MaskIoU head), ``loss_fcos_cls``,
            ``loss_fcos_loc``, ``loss_fcos_ctr``: scalar tensors; their sum is the training loss.
        """
        if images.dim() != 4 or images.shape[0] != len(targets) or image_sizes.shape != (len(targets), 2):
            raise InputError(
                f"training_losses needs images [B, 3, H, W], image_sizes [B, 2] and B targets; got "
                f"{tuple(images.shape)}, {tuple(image_sizes.shape)} and {len(targets)} targets"
            )
        for i, t in enumerate(targets):
            missing = {"boxes", "classes", "polygons"} - set(t)
            if missing:
                raise InputError(f"target {i} lacks {sorted(missing)}; each needs boxes, classes and polygons")
            if len(t["polygons"]) != t["boxes"].shape[0] or t["classes"].shape[0] != t["boxes"].shape[0]:
                raise InputError(
                    f"target {i}: {t['boxes'].shape[0]} boxes, {t['classes'].shape[0]} classes and "
                    f"{len(t['polygons'])} polygon lists must agree"
                )
        features = self.backbone(images)
        gt_boxes = [t["boxes"].to(device=images.device, dtype=torch.float32) for t in targets]
        gt_classes = [t["classes"].to(device=images.device, dtype=torch.int64) for t in targets]
        fcos_losses, proposals = self.proposal_generator.training_losses(features, gt_boxes, gt_classes)
        roi_losses, roi_stats = self.roi_heads.training_losses(
            features, proposals, image_sizes, gt_boxes, gt_classes, [t["polygons"] for t in targets]
        )
        if stats is not None:
            stats.update(roi_stats)
            stats["fcos/num_proposals"] = sum(int(p.shape[0]) for p in proposals) / len(proposals)
        return {**roi_losses, **fcos_losses}
