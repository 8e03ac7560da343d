"""Layers shared by the whole network, and the padding machinery they run under.

* :mod:`.blocks`: the building blocks of backbones, FPN and heads: :class:`FrozenBatchNorm2d`,
  :class:`Conv2d` (a convolution with an attached norm and activation), :func:`get_norm`,
  :class:`DeformConv2d`, :class:`ShapeSpec`, weight fills and :func:`freeze_module`; parameter
  names follow detectron2 so official checkpoints load as they are.
* :mod:`.padding`: padding-invariant execution (:class:`ValidRegion` and :func:`run` /
  :func:`run_layer` / :func:`output_region` / :func:`max_pool2d`) and the input step
  :func:`normalize` (raw pixels to network input, zeros in the padding).

The dependency is one way: :mod:`.blocks` uses :mod:`.padding`, never the reverse (a layer that
acts on each position alone says so with a ``pointwise = True`` class attribute). Nothing here
imports the rest of :mod:`centermask2.modeling` except its ops (:mod:`..ops`), nor the config,
data or engine packages.
"""

from .blocks import (
    SUPPORTED_NORMS,
    Conv2d,
    DeformConv2d,
    FrozenBatchNorm2d,
    ShapeSpec,
    c2_msra_fill,
    c2_xavier_fill,
    conv3x3_norm_relu,
    freeze_module,
    get_norm,
)
from .padding import ValidRegion, max_pool2d, normalize, output_region, run, run_layer, run_with_region

__all__ = [
    "SUPPORTED_NORMS",
    "Conv2d",
    "DeformConv2d",
    "FrozenBatchNorm2d",
    "ShapeSpec",
    "ValidRegion",
    "c2_msra_fill",
    "conv3x3_norm_relu",
    "c2_xavier_fill",
    "freeze_module",
    "get_norm",
    "max_pool2d",
    "normalize",
    "output_region",
    "run",
    "run_layer",
    "run_with_region",
]
