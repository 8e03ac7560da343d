"""Initial weights of a newly built model, with upstream's conventions, so training can start
from nothing or from a backbone-only checkpoint (whatever a checkpoint holds overwrites them).

- backbone (bottom-up): He-normal convolutions (fan-out, ReLU gain), zero biases, unit norms;
- FPN and its P6/P7 block: "Caffe2 Xavier" (He-uniform with ``a=1``), zero biases;
- FCOS head: normal(0, 0.01) convolutions, zero biases, the classification bias at
  ``-log((1 - PRIOR_PROB) / PRIOR_PROB)`` so that every location starts at ``PRIOR_PROB``;
- mask and MaskIoU heads: He-normal (fan-out) convolutions and deconvolution, "Caffe2 Xavier"
  fully connected layers; the mask predictor normal(0, 0.001), the MaskIoU predictor normal(0, 0.01).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["initialize_weights"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _msra(module: nn.Module) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _xavier(module: nn.Module) -> None:
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _normal(module: nn.Module, std: float) -> None:
    nn.init.normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def initialize_weights(model: nn.Module, prior_prob: float = 0.01) -> None:
    """Initialize a :class:`~centermask2.modeling.CenterMask` in place (see the module doc)."""
    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    for m in bottom_up.modules():
        if isinstance(m, _CONVS):
            _msra(m)
        elif isinstance(m, nn.Linear):
            _normal(m, 0.01)
    _norms(bottom_up)
    if bottom_up is not backbone:
        for name, m in backbone.named_modules():
            if not name.startswith("bottom_up") and isinstance(m, _CONVS):
                _xavier(m)

    head = model.proposal_generator.fcos_head
    for m in head.modules():
        if isinstance(m, _CONVS):
            _normal(m, 0.01)
    _norms(head)
    nn.init.constant_(head.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    roi = model.roi_heads
    for part in (getattr(roi, "mask_head", None), getattr(roi, "maskiou_head", None)):
        if part is None:
            continue
        for m in part.modules():
            if isinstance(m, _CONVS):
                _msra(m)
            elif isinstance(m, nn.Linear):
                _xavier(m)
        _norms(part)
    if getattr(roi, "mask_head", None) is not None:
        _normal(roi.mask_head.predictor, 0.001)
    if getattr(roi, "maskiou_head", None) is not None:
        _normal(roi.maskiou_head.maskiou, 0.01)
