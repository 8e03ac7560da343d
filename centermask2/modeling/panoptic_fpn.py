"""Panoptic-CenterMask: upstream's ``PanopticFPN`` meta-architecture with CenterMask's detector.

The network is :class:`~centermask2.modeling.meta_arch.CenterMask` (backbone + FPN, FCOS,
CenterROIHeads) plus the semantic head (:class:`~centermask2.modeling.semantic_seg.SemSegFPNHead`)
on the FPN levels ``p2`` ... ``p5``. Tensors in, tensors out, like the instance model: the
semantic logits come out at stride 4 as one more output, ``sem_seg``; resizing them and
combining them with the instances are the pure functions of :mod:`centermask2.modeling.panoptic`.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from ..contract import PANOPTIC_OUTPUT_NAMES, SEM_SEG_OUTPUT
from ..errors import ConfigError, UnsupportedError
from .meta_arch import CenterMask
from .panoptic import CombineSettings
from .semantic_seg import SemSegFPNHead

__all__ = ["PanopticCenterMask"]

logger = logging.getLogger(__name__)


class PanopticCenterMask(CenterMask):
    """CenterMask with Panoptic FPN's semantic head.

    Args:
        sem_seg_head: the semantic head, fed by the backbone's FPN levels.
        combine: the thresholds of the panoptic combination (``MODEL.PANOPTIC_FPN.COMBINE``), kept
            for the post-processing; the network does not use them.
        **parts: as for :class:`CenterMask` (backbone, proposal_generator, roi_heads, pixel_mean,
            pixel_std, input_format).

    The state dict is upstream's: ``backbone.*``, ``proposal_generator.*``, ``roi_heads.*``, then
    ``sem_seg_head.*``.
    """

    def __init__(self, *, sem_seg_head: SemSegFPNHead, combine: CombineSettings | None = None, **parts: Any) -> None:
        super().__init__(**parts)
        missing = [f for f in sem_seg_head.in_features if f not in self.backbone.out_feature_strides]
        if missing:
            raise ConfigError(f"the semantic head reads {missing}, which the backbone does not produce")
        self.sem_seg_head = sem_seg_head
        self.combine = combine or CombineSettings()

    @classmethod
    def from_config(cls, cfg: Any, **parts: Any) -> PanopticCenterMask:
        """The panoptic model of a ``PanopticFPN`` config, from the detector's parts built by
        :func:`~centermask2.modeling.build_model`."""
        if float(cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT) != 1.0:
            logger.warning("MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT only scales training losses; inference ignores it")
        head = SemSegFPNHead.from_config(cfg, parts["backbone"].output_shape())
        return cls(sem_seg_head=head, combine=CombineSettings.from_config(cfg), **parts)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Keys of :meth:`forward`'s result, in order: the instance outputs, then ``sem_seg``."""
        return PANOPTIC_OUTPUT_NAMES

    @property
    def num_sem_seg_classes(self) -> int:
        """Channels of ``sem_seg`` (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``)."""
        return self.sem_seg_head.num_classes

    @property
    def sem_seg_stride(self) -> int:
        """Stride of ``sem_seg`` w.r.t. the input (``MODEL.SEM_SEG_HEAD.COMMON_STRIDE``)."""
        return self.sem_seg_head.common_stride

    def forward(
        self, images: Tensor, image_sizes: Tensor, ignore_padding: bool = True, full_masks: bool = False
    ) -> dict[str, Tensor]:
        """Run the network (arguments as :meth:`CenterMask.forward`).

        Returns:
            dict (keys :attr:`output_names`): :meth:`CenterMask.forward`'s outputs and
            ``sem_seg`` Tensor[B, NUM_CLASSES, H/4, W/4] float32, the semantic logits at stride 4
            of the padded input (detectron2's before its final 4x upsampling). With
            ``ignore_padding``, each image's logits inside its own padded size (a multiple of
            :attr:`size_divisibility`) are those of its default-padding run, and 0 outside.
        """
        features, regions = self._features(images, image_sizes, ignore_padding, full_masks)
        outputs = self._instances(features, regions, image_sizes)
        outputs[SEM_SEG_OUTPUT] = self.sem_seg_head(features, regions)
        return outputs

    def training_losses(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Not available: training Panoptic-CenterMask needs semantic targets the training data does
        not provide yet (the head's own loss is :meth:`SemSegFPNHead.losses`)."""
        raise UnsupportedError(
            "training a Panoptic-CenterMask (PanopticFPN) model is not supported; train an instance "
            "CenterMask config instead"
        )
