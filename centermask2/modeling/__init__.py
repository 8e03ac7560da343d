"""CenterMask2 network in plain PyTorch: inference and upstream's training losses.

Where things live:

* :mod:`.meta_arch`: :class:`CenterMask` (backbone + FPN, FCOS, ROI heads; ``normalize`` raw
  pixels, ``forward``, ``training_losses``); :mod:`.panoptic_fpn`: :class:`PanopticCenterMask`,
  the same plus the semantic FPN head (:mod:`.semantic_seg`); :mod:`.build`: :func:`build_model`
  from a config;
* :mod:`.backbone`: VoVNetV2, ResNet/ResNeXt, MobileNetV2 and the FPN, and ``build_backbone``;
* :mod:`.fcos`, :mod:`.roi_heads`: the proposal generator and the mask / MaskIoU heads;
* :mod:`.layers`: the layers they share (``Conv2d``, ``FrozenBatchNorm2d``, ``DeformConv2d``,
  ``get_norm``, ...) and padding-invariant execution (``ValidRegion``, ``run``, ``normalize``);
* :mod:`.ops`: NMS, RoIAlign and deformable convolution as named ops with plain-PyTorch
  references; :mod:`.losses`: training targets and losses; :mod:`.init`: upstream's initial
  weights; :mod:`.postprocessing`: results back to the original image; :mod:`.panoptic`: semantic
  labels at the original size and their combination with the instances into panoptic segments.

This package depends only on torch, numpy, pycocotools and :mod:`centermask2.errors` /
:mod:`centermask2.contract`: configs are passed in, never imported, and nothing here imports
``centermask2.data``, ``config``, ``engine``, ``offline``, ``export`` or ``cli``
(``tests/test_layout.py``).
"""

from .build import build_model
from .meta_arch import OUTPUT_NAMES, CenterMask
from .panoptic_fpn import PanopticCenterMask

__all__ = ["CenterMask", "PanopticCenterMask", "build_model", "OUTPUT_NAMES"]
