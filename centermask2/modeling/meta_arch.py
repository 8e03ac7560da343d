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
from ..data.transforms import normalize
from ..errors import InputError
from .backbone import build_backbone
from .fcos import FCOS
from .padding import ValidRegion
from .roi_heads import CenterROIHeads

__all__ = ["CenterMask", "build_model", "OUTPUT_NAMES"]

logger = logging.getLogger(__name__)


class CenterMask(nn.Module):
    """CenterMask instance segmentation, inference only.

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
            (:func:`centermask2.data.transforms.normalize`).
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
                whatever else is in the batch (:mod:`.padding`). False: the padding is part of
                the input, as when upstream runs on the padded tensor (cheaper; the same when
                :meth:`needs_padding_invariance` is False).
            full_masks: how the padding masks are applied (the same numbers): in each tensor's
                shape, for exported graphs (ONNX Runtime keeps its blocked layout), or broadcast,
                cheaper eagerly (:class:`~.padding.ValidRegion`).

        Returns:
            dict (keys :data:`OUTPUT_NAMES`), K = :attr:`max_detections`:
              ``boxes`` Tensor[B, K, 4] xyxy float32 in network-input pixels,
              ``scores`` Tensor[B, K], ``classes`` Tensor[B, K] int64 (0-based contiguous),
              ``masks`` Tensor[B, K, 28, 28] probabilities of the predicted class,
              ``mask_scores`` Tensor[B, K], ``num_detections`` Tensor[B] int64.
            Rows are sorted by score; rows past ``num_detections`` are zero.
        """
        region = ValidRegion.for_input(image_sizes, self.size_divisibility, full_masks) if ignore_padding else None
        features, regions = self.backbone.forward_with_regions(images, region)
        if region is None:
            regions = None
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


def build_model(cfg: Any) -> CenterMask:
    """Build the network described by a config (weights not loaded; eval mode).

    Args:
        cfg: a config from :func:`centermask2.config.load_config`.
    """
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise InputError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} is not supported; "
            "CenterMask configs use 'GeneralizedRCNN'"
        )
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME != "FCOS":
        raise InputError(
            f"MODEL.PROPOSAL_GENERATOR.NAME={cfg.MODEL.PROPOSAL_GENERATOR.NAME!r} is not supported; use 'FCOS'"
        )
    if cfg.MODEL.ROI_HEADS.NAME != "CenterROIHeads":
        raise InputError(f"MODEL.ROI_HEADS.NAME={cfg.MODEL.ROI_HEADS.NAME!r} is not supported; use 'CenterROIHeads'")
    backbone = build_backbone(cfg)
    strides = dict(backbone.out_feature_strides)
    channels = dict(backbone.out_feature_channels)
    fcos_in = list(cfg.MODEL.FCOS.IN_FEATURES)
    missing = [f for f in fcos_in if f not in strides]
    if missing:
        raise InputError(
            f"MODEL.FCOS.IN_FEATURES names {missing}, which the backbone does not produce (it produces {sorted(strides)})"
        )
    fcos = FCOS.from_config(cfg, in_channels=channels[fcos_in[0]])
    roi_heads = CenterROIHeads.from_config(cfg, strides, channels)
    model = CenterMask(
        backbone=backbone,
        proposal_generator=fcos,
        roi_heads=roi_heads,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        input_format=cfg.INPUT.FORMAT,
    )
    model.eval()
    return model
