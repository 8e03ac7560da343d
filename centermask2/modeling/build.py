"""Building a model from a config: :class:`~.meta_arch.CenterMask`, or for ``PanopticFPN``
configs :class:`~.panoptic_fpn.PanopticCenterMask` (the same detector plus the semantic head)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .backbone import build_backbone
from .fcos import FCOS
from .init import initialize_weights
from .meta_arch import CenterMask
from .panoptic_fpn import PanopticCenterMask
from .roi_heads import CenterROIHeads

__all__ = ["build_model"]


def build_model(cfg: Any) -> CenterMask:
    """Build the network described by a config: upstream's initial weights
    (:func:`~centermask2.modeling.init.initialize_weights`; no checkpoint loaded), eval mode.

    ``MODEL.META_ARCHITECTURE: GeneralizedRCNN`` gives a :class:`CenterMask`; ``PanopticFPN``
    (the ``panoptic_centermask_*`` configs) a :class:`~centermask2.modeling.panoptic_fpn.PanopticCenterMask`,
    the same detector plus the semantic head (one more output, ``sem_seg``).

    Args:
        cfg: a config from :func:`centermask2.config.load_config`.
    """
    if cfg.MODEL.META_ARCHITECTURE not in ("GeneralizedRCNN", "PanopticFPN"):
        raise InputError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} is not supported; "
            "CenterMask configs use 'GeneralizedRCNN', Panoptic-CenterMask configs 'PanopticFPN'"
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
    parts: dict[str, Any] = dict(
        backbone=backbone,
        proposal_generator=fcos,
        roi_heads=roi_heads,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        input_format=cfg.INPUT.FORMAT,
    )
    if cfg.MODEL.META_ARCHITECTURE == "PanopticFPN":
        model: CenterMask = PanopticCenterMask.from_config(cfg, **parts)
    else:
        model = CenterMask(**parts)
    initialize_weights(model, prior_prob=float(cfg.MODEL.FCOS.PRIOR_PROB))
    model.eval()
    return model
