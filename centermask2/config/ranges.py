"""Value ranges of the config keys the toolkit reads, checked once when a config loads.

The merge (:mod:`.config`) checks types; this checks values: a negative test size, an unknown
``INPUT.FORMAT``, a top-k of -1 or a zero ``PIXEL_STD`` would otherwise surface per image (every
image "failing"), as a crash inside the model, or as zero detections without a word. Each
:class:`Rule` names a key and what it accepts; :func:`check_config_ranges` raises one
:class:`~centermask2.errors.ConfigError` naming the key, its value, the valid range and where the
value came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..contract import MAX_DETECTIONS
from ..errors import ConfigError

__all__ = ["MAX_IMAGE_SIDE", "Rule", "RULES", "check_config_ranges"]

#: largest resize target (``INPUT.MIN_SIZE_*`` / ``MAX_SIZE_*``): one float32 image at 16384 x 16384
#: already takes 3 GB
MAX_IMAGE_SIDE = 16384


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What one key accepts: ``ok(value)`` is True for a valid value, ``text`` says which those are."""

    key: str
    ok: Callable[[Any], bool]
    text: str


def _between(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, integer: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(value: Any) -> bool:
        if not _number(value) or (integer and not isinstance(value, int)):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        return high is None or (value < high if high_open else value <= high)

    def fmt(v: float) -> str:
        return f"{v:g}"

    if high is None:
        text = f"must be {'>' if low_open else '>='} {fmt(low)}"
    else:
        text = f"must be in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    return ok, text


def _each(check: tuple[Callable[[Any], bool], str], count: int | None = None,
          nonempty: bool = True) -> tuple[Callable[[Any], bool], str]:
    ok, text = check

    def all_ok(value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count):
            return False
        return (bool(value) or not nonempty) and all(ok(v) for v in value)

    many = f"{count} values" if count is not None else "a non-empty list of values" if nonempty else "a list of values"
    return all_ok, f"must be {many}, each {text.removeprefix('must be ')}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value in choices), "must be one of " + ", ".join(repr(c) for c in choices)


def _power_of_two() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0 and v & (v - 1) == 0,
            "must be a power of 2 (1, 2, 4, 8, ...)")


def _increasing_steps() -> tuple[Callable[[Any], bool], str]:
    """Iterations where the learning rate drops (``SOLVER.STEPS``): as detectron2's ``WarmupMultiStepLR``,
    a list of non-negative integers in increasing order (unsorted ones would drop it at the wrong time)."""
    def ok(value: Any) -> bool:
        return (isinstance(value, (list, tuple))
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
                and list(value) == sorted(value))

    return ok, "must be a list of non-negative integers in increasing order (iterations where the LR drops)"


def _rules(spec: Mapping[str, tuple[Callable[[Any], bool], str]]) -> tuple[Rule, ...]:
    return tuple(Rule(key, ok, text) for key, (ok, text) in spec.items())


_COUNT = _between(1, integer=True)
_COUNT0 = _between(0, integer=True)
_PROBABILITY = _between(0, 1)
_SIDE = _between(1, MAX_IMAGE_SIDE, integer=True)
_WEIGHT = _between(0)

#: every key the toolkit reads whose type alone does not make it valid
RULES: tuple[Rule, ...] = _rules({
    # inference: input rules
    "INPUT.MIN_SIZE_TEST": _between(0, MAX_IMAGE_SIDE, integer=True),  # 0: no resize
    "INPUT.MAX_SIZE_TEST": _SIDE,
    "INPUT.FORMAT": _one_of("BGR", "RGB"),
    "MODEL.PIXEL_MEAN": _each(((_number), "a finite number"), 3),
    "MODEL.PIXEL_STD": _each(_between(0, low_open=True), 3),
    # inference: FCOS
    "MODEL.FCOS.NUM_CLASSES": _COUNT,
    "MODEL.FCOS.FPN_STRIDES": _each(_power_of_two()),
    "MODEL.FCOS.PRIOR_PROB": _between(0, 1, low_open=True, high_open=True),
    "MODEL.FCOS.INFERENCE_TH_TEST": _between(0, 1, high_open=True),
    "MODEL.FCOS.NMS_TH": _PROBABILITY,
    "MODEL.FCOS.PRE_NMS_TOPK_TEST": _COUNT,
    "MODEL.FCOS.POST_NMS_TOPK_TEST": _between(1, MAX_DETECTIONS, integer=True),
    "MODEL.FCOS.NUM_CLS_CONVS": _COUNT0,
    "MODEL.FCOS.NUM_BOX_CONVS": _COUNT0,
    "MODEL.FCOS.NUM_SHARE_CONVS": _COUNT0,
    # inference: ROI mask and MaskIoU heads
    "MODEL.ROI_HEADS.NUM_CLASSES": _COUNT,
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": _between(1, 256, integer=True),
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": _COUNT0,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": _COUNT0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": _COUNT,
    "MODEL.ROI_MASKIOU_HEAD.CONV_DIM": _COUNT,
    "MODEL.ROI_MASKIOU_HEAD.NUM_CONV": _COUNT0,
    # inference: panoptic
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": _between(1, 255, integer=True),  # labels are uint8 PNGs, 255 void
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": _power_of_two(),
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": _COUNT,
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": _between(0, 255, integer=True),
    "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH": _PROBABILITY,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT": _between(0),
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH": _PROBABILITY,
    "TEST.DETECTIONS_PER_IMAGE": _COUNT0,
    "TEST.EVAL_PERIOD": _COUNT0,
    # training
    "INPUT.MIN_SIZE_TRAIN": _each(_SIDE),
    "INPUT.MAX_SIZE_TRAIN": _SIDE,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": _one_of("choice", "range"),
    "INPUT.RANDOM_FLIP": _one_of("horizontal", "vertical", "none"),
    "MODEL.FCOS.INFERENCE_TH_TRAIN": _between(0, 1, high_open=True),
    "MODEL.FCOS.PRE_NMS_TOPK_TRAIN": _COUNT,
    "MODEL.FCOS.POST_NMS_TOPK_TRAIN": _COUNT,
    "MODEL.FCOS.LOSS_ALPHA": _PROBABILITY,
    "MODEL.FCOS.LOSS_GAMMA": _WEIGHT,
    "MODEL.FCOS.POS_RADIUS": _between(0, low_open=True),
    "MODEL.FCOS.SIZES_OF_INTEREST": _each(_between(0, low_open=True), nonempty=False),
    "MODEL.MASKIOU_LOSS_WEIGHT": _WEIGHT,
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": _WEIGHT,
    "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT": _WEIGHT,
    "DATALOADER.NUM_WORKERS": _COUNT0,
    "SOLVER.IMS_PER_BATCH": _COUNT,
    "SOLVER.BASE_LR": _between(0, low_open=True),
    "SOLVER.MAX_ITER": _COUNT,
    "SOLVER.MOMENTUM": _PROBABILITY,
    "SOLVER.WEIGHT_DECAY": _WEIGHT,
    "SOLVER.WARMUP_ITERS": _COUNT0,
    "SOLVER.WARMUP_FACTOR": _PROBABILITY,
    "SOLVER.GAMMA": _between(0, low_open=True),
    "SOLVER.STEPS": _increasing_steps(),
    "SOLVER.CHECKPOINT_PERIOD": _COUNT,
})


def _lookup(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else (
            f"({inner})" if isinstance(value, tuple) else f"[{inner}]")
    return repr(value)


def check_config_ranges(cfg: Mapping[str, Any], origin: Callable[[str], str] = lambda key: "the config",
                        rules: Sequence[Rule] = RULES) -> None:
    """Check every :data:`RULES` key of a merged config (keys it lacks are skipped).

    Args:
        cfg: the merged config.
        origin: where a key's value came from (a file, the command-line overrides, the defaults).

    Raises:
        ConfigError: ``KEY = value is out of range: <what it accepts> (set in <origin>)``, for the
            first key out of range.
    """
    for rule in rules:
        found, value = _lookup(cfg, rule.key)
        if found and not rule.ok(value):
            raise ConfigError(f"{rule.key} = {_show(value)} is out of range: {rule.text} (set in {origin(rule.key)})")
    sampling, sizes = _lookup(cfg, "INPUT.MIN_SIZE_TRAIN_SAMPLING")[1], _lookup(cfg, "INPUT.MIN_SIZE_TRAIN")[1]
    if sampling == "range" and isinstance(sizes, (list, tuple)) and len(sizes) != 2:
        raise ConfigError(f"INPUT.MIN_SIZE_TRAIN = {_show(sizes)} is out of range: 'range' sampling needs two values "
                          f"[min, max] (set in {origin('INPUT.MIN_SIZE_TRAIN')})")
