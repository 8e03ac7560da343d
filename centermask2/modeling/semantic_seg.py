"""The semantic segmentation head of Panoptic FPN (detectron2's ``SemSegFPNHead`` semantics).

Each FPN level ``p<k>`` (stride ``2**k``) goes through ``max(1, k - log2(COMMON_STRIDE))``
stages of a 3x3 convolution (``CONVS_DIM`` channels, ``NORM``, ReLU), each followed by a 2x
bilinear upsampling (``align_corners=False``) unless the level already has the common stride.
The levels, all at the common stride (4), are summed and a 1x1 convolution predicts
``NUM_CLASSES`` logits. The head returns these stride-4 logits; detectron2 upsamples them 4x
before its post-processing, which here is the pure function
:func:`centermask2.modeling.panoptic.sem_seg_postprocess`.

Parameter names follow detectron2 (``sem_seg_head.p2.0.weight``, ``sem_seg_head.p5.4.norm.bias``,
``sem_seg_head.predictor.weight``, ...): the upsampling steps hold no tensors but keep their
place in each level's ``nn.Sequential``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from .layers import Conv2d, ShapeSpec, ValidRegion, c2_msra_fill, conv3x3_norm_relu, run_with_region

__all__ = ["SemSegFPNHead", "BilinearUpsample2x"]

logger = logging.getLogger(__name__)


class BilinearUpsample2x(nn.Module):
    """2x bilinear upsampling (``align_corners=False``) that can ignore the padding.

    Inside a region of size ``(h, w)`` the output (``2h x 2w``) reads the input rows ``0..h``: the
    last output rows interpolate between row ``h - 1`` and row ``h``, which in a tensor that ends
    at ``h`` is row ``h - 1`` again (PyTorch clamps the neighbour index). With a region, every
    image's rows and columns past its region are first replaced by its last row / column, so the
    same arithmetic reads the same values and the output inside ``(2h, 2w)`` equals the unpadded
    run exactly.
    """

    #: upsampling factor
    scale_factor = 2

    def forward(self, x: Tensor, region: ValidRegion | None = None) -> Tensor:
        """
        Args:
            x (Tensor[B, C, H, W]): input.
            region: valid (h, w) of each image of ``x``, or None to upsample the tensor as it is.

        Returns:
            Tensor[B, C, 2H, 2W].
        """
        if region is not None:
            x = _clamp_to_region(x, region)
        return F.interpolate(x, scale_factor=float(self.scale_factor), mode="bilinear", align_corners=False)

    def output_region(self, region: ValidRegion) -> ValidRegion:
        """Region of the output: twice the input's."""
        return ValidRegion(region.sizes * self.scale_factor, region.full_masks)


def _clamp_to_region(x: Tensor, region: ValidRegion) -> Tensor:
    """``x[b, :, min(i, h_b - 1), min(j, w_b - 1)]``: each image's last valid row and column
    repeated over its padding (Tensor[B, C, H, W] -> same shape)."""
    b, c, h, w = x.shape
    device = region.sizes.device
    last = (region.sizes - 1).clamp(min=0)  # [B, 2]
    rows = torch.minimum(torch.arange(h, device=device)[None, :], last[:, 0:1])  # [B, H]
    cols = torch.minimum(torch.arange(w, device=device)[None, :], last[:, 1:2])  # [B, W]
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


class SemSegFPNHead(nn.Module):
    """Panoptic FPN's semantic head: FPN levels -> logits at the common stride.

    Args:
        input_shape: channels and stride of each input level (e.g. ``p2`` ... ``p5``); they are
            used from the finest to the coarsest.
        num_classes: predicted classes (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``, 54 for COCO panoptic:
            0 = "things", 1-53 the stuff classes).
        conv_dims: channels of the 3x3 convolutions (``CONVS_DIM``).
        common_stride: stride of the output (``COMMON_STRIDE``).
        norm: norm of the 3x3 convolutions (``""``: none, they then have a bias; ``"GN"``...).
        ignore_value: label ignored by :meth:`losses` (``IGNORE_VALUE``).
        loss_weight: factor of the training loss (``LOSS_WEIGHT``).
    """

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        norm: str = "",
        ignore_value: int = -1,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not input_shape:
            raise ConfigError("the semantic head has no input feature; set MODEL.SEM_SEG_HEAD.IN_FEATURES (e.g. p2 ... p5)")
        levels = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in levels]
        self.num_classes = int(num_classes)
        self.common_stride = int(common_stride)
        self.ignore_value = int(ignore_value)
        self.loss_weight = float(loss_weight)
        for name, spec in levels:
            if spec.stride < self.common_stride:
                raise ConfigError(
                    f"semantic head input {name!r} has stride {spec.stride}, finer than "
                    f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE={self.common_stride}"
                )
            stages: list[nn.Module] = []
            num_stages = max(1, int(math.log2(spec.stride) - math.log2(self.common_stride)))
            for k in range(num_stages):
                conv = conv3x3_norm_relu(spec.channels if k == 0 else conv_dims, conv_dims, norm)
                c2_msra_fill(conv)
                stages.append(conv)
                if spec.stride != self.common_stride:
                    stages.append(BilinearUpsample2x())
            self.add_module(name, nn.Sequential(*stages))
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1, stride=1, padding=0)
        c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: Mapping[str, ShapeSpec]) -> SemSegFPNHead:
        """The head of ``cfg.MODEL.SEM_SEG_HEAD`` on the levels of ``input_shape`` it names.

        Raises:
            ConfigError: ``NAME`` is not ``SemSegFPNHead``, or ``IN_FEATURES`` names a level the
                backbone does not produce.
        """
        scfg = cfg.MODEL.SEM_SEG_HEAD
        if scfg.NAME != "SemSegFPNHead":
            raise ConfigError(f"MODEL.SEM_SEG_HEAD.NAME={scfg.NAME!r} is not supported; use 'SemSegFPNHead'")
        missing = [f for f in scfg.IN_FEATURES if f not in input_shape]
        if missing:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not produce "
                f"(it produces {sorted(input_shape)})"
            )
        return cls(
            {name: spec for name, spec in input_shape.items() if name in scfg.IN_FEATURES},
            num_classes=int(scfg.NUM_CLASSES),
            conv_dims=int(scfg.CONVS_DIM),
            common_stride=int(scfg.COMMON_STRIDE),
            norm=scfg.NORM,
            ignore_value=int(scfg.IGNORE_VALUE),
            loss_weight=float(scfg.LOSS_WEIGHT),
        )

    def forward(
        self, features: Mapping[str, Tensor], regions: Mapping[str, ValidRegion | None] | None = None
    ) -> Tensor:
        """Logits at the common stride.

        Args:
            features: ``{"p2": Tensor[B, C, H/4, W/4], ..., "p5": Tensor[B, C, H/32, W/32]}``
                (H, W the padded input, multiples of the coarsest stride).
            regions: the region of every level (``padding.ValidRegion``), to give every image what it
                computes alone padded to its own multiple of 32; None: the padding is part of the
                input.

        Returns:
            Tensor[B, num_classes, H/4, W/4] float: the logits before detectron2's final 4x
            upsampling. With ``regions``, 0 outside each image's region.
        """
        out: Tensor | None = None
        out_region: ValidRegion | None = None
        for name in self.in_features:
            x, region = run_with_region(getattr(self, name), features[name], None if regions is None else regions[name])
            if out is None:
                out, out_region = x, region  # every level ends at the common stride, in this region
            else:
                out = out + x
        assert out is not None
        out = self.predictor(out)
        if out_region is not None:
            out = out_region.fill_outside(out)
        return out

    def losses(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """detectron2's semantic training loss: logits upsampled to the input resolution
        (bilinear, ``align_corners=False``), mean cross entropy over the pixels that are not
        ``ignore_value``, times ``loss_weight``.

        Args:
            logits (Tensor[B, K, H/s, W/s]): :meth:`forward`'s output (s = common stride).
            targets (Tensor[B, H, W] int64): per pixel class, ``ignore_value`` in the padding.

        Returns:
            ``{"loss_sem_seg": scalar Tensor}``.
        """
        up = F.interpolate(logits.float(), scale_factor=float(self.common_stride), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(up, targets, reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}
