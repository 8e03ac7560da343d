"""The model's input/output contract and the metadata an exported model carries.

One place for what every path (PyTorch, ONNX Runtime, offline ``.bin`` engines) agrees on:

* inputs: ``images`` [B, 3, H, W] raw pixels (``uint8`` or ``float32``, the model's choice) in the
  config's channel order, zero-padded bottom/right, and ``image_sizes`` [B, 2] ``int64``, the
  valid (h, w) of every image;
* outputs (:data:`OUTPUT_NAMES`, in this order), K = ``max_detections``, M = mask side (28):
  ``boxes`` [B, K, 4] float32 xyxy in network-input pixels, ``scores`` [B, K] float32,
  ``classes`` [B, K] int64 (contiguous), ``masks`` [B, K, M, M] float32 probabilities,
  ``mask_scores`` [B, K] float32, ``num_detections`` [B] int64; rows past ``num_detections``
  are zero;
* the ``metadata_props`` of an exported ``.onnx`` (:class:`ModelMetadata`, keys
  ``centermask2.*``), written by the exporter and read by every runtime;
* :func:`check_detections`, the one check of a model's outputs that every path runs before using
  them (image mode, Ray, ``--bins`` post-processing, panoptic ``sem_seg``).

This module imports neither torch nor the model: runtimes read a model's contract cheaply.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BackendError, CenterMask2Error, InputError
from .fileio import check_input_file, parse_json_text

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "SEM_SEG_OUTPUT",
    "PANOPTIC_OUTPUT_NAMES",
    "INPUT_DTYPES",
    "PADDING_MODES",
    "DEFAULT_MASK_SIZE",
    "MAX_DETECTIONS",
    "OutputSpec",
    "expected_nbytes",
    "default_output_specs",
    "ModelMetadata",
    "PanopticSettings",
    "read_metadata",
    "model_output_specs",
    "check_detections",
]

#: Input names, in order, of :meth:`CenterMask.forward`'s exported form.
INPUT_NAMES = ("images", "image_sizes")
#: Output names, in order, of :meth:`CenterMask.forward` (and of exported models).
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks", "mask_scores", "num_detections")
#: The extra output of panoptic models (``MODEL.META_ARCHITECTURE: PanopticFPN``): the semantic
#: head's logits at stride 4 of the padded input, float32 [B, NUM_CLASSES, H/4, W/4].
SEM_SEG_OUTPUT = "sem_seg"
#: Output names, in order, of a panoptic model: :data:`OUTPUT_NAMES` then :data:`SEM_SEG_OUTPUT`.
PANOPTIC_OUTPUT_NAMES = (*OUTPUT_NAMES, SEM_SEG_OUTPUT)
#: dtypes the ``images`` input can have
INPUT_DTYPES = ("uint8", "float32")
#: How padding beyond each image's multiple of the size divisibility is treated (static models,
#: ``--pad-to``, batches of different sizes): ``"ignore"`` — it has no effect, every image gets what
#: upstream computes for it alone (upstream's published setting); ``"include"`` — it is part of the
#: input, as when upstream runs on the padded tensor.
PADDING_MODES = ("ignore", "include")
#: side of the per-detection mask of the official CenterMask configs (2 x ROI_MASK_HEAD.POOLER_RESOLUTION)
DEFAULT_MASK_SIZE = 28
#: most output rows per image (K) a model may have (``--max-detections``,
#: ``MODEL.FCOS.POST_NMS_TOPK_TEST``): at 10000 one image's ``masks`` output already takes 31 MB
MAX_DETECTIONS = 10000

_PREFIX = "centermask2."
_DIGITS = re.compile(r"[0-9]{1,9}")
#: bounds of the metadata's sizes: a side, a static batch, the detections per image (K)
_MAX_SIDE = 1 << 16
_MAX_BATCH = 1024
_MAX_DETECTIONS = 100_000


class _NotJson(ValueError):
    """A metadata value that should be JSON is not (standard, bounded) JSON."""


def expected_nbytes(shape: Sequence[int], dtype: str | np.dtype) -> int:
    """Bytes of a C-order array of ``shape`` and ``dtype``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclass
class OutputSpec:
    """One model output as stored per image: position, name, dtype and shape ``[1, ...]``."""

    index: int
    name: str
    dtype: str
    shape: list[int]

    @property
    def nbytes(self) -> int:
        """Bytes of one image's tensor."""
        return expected_nbytes(self.shape, self.dtype)


def default_output_specs(max_detections: int, mask_size: int = DEFAULT_MASK_SIZE) -> list[OutputSpec]:
    """Per-image layout of the standard outputs (:data:`OUTPUT_NAMES`).

    K = ``max_detections``: ``boxes`` [1, K, 4] float32, ``scores`` [1, K] float32, ``classes``
    [1, K] int64, ``masks`` [1, K, M, M] float32 (M = ``mask_size``), ``mask_scores`` [1, K]
    float32, ``num_detections`` [1] int64.
    """
    k, m = int(max_detections), int(mask_size)
    layout = [
        ("boxes", "float32", [1, k, 4]),
        ("scores", "float32", [1, k]),
        ("classes", "int64", [1, k]),
        ("masks", "float32", [1, k, m, m]),
        ("mask_scores", "float32", [1, k]),
        ("num_detections", "int64", [1]),
    ]
    return [OutputSpec(index=i, name=n, dtype=d, shape=s) for i, (n, d, s) in enumerate(layout)]


@dataclass(frozen=True)
class ModelMetadata:
    """Settings an exported model carries (``metadata_props``), parsed.

    Attributes:
        config_yaml: the full resolved config.
        class_names, category_ids: per contiguous class.
        pixel_mean, pixel_std: normalization done inside the graph.
        input_format: ``"BGR"`` or ``"RGB"``.
        min_size, max_size: the ResizeShortestEdge test rule.
        size_divisibility: padded H and W must be multiples of it.
        dynamic: any batch and H, W (multiples of ``size_divisibility``) instead of a fixed shape.
        input_size: (H, W) of a static model, None for a dynamic one.
        batch_size: batch of a static model, None for a dynamic one.
        input_dtype: one of :data:`INPUT_DTYPES`.
        max_detections: output rows per image (K).
        output_names: :data:`OUTPUT_NAMES` at export time.
        version: the toolkit's version that exported the model.
        padding: one of :data:`PADDING_MODES`; models exported before the key existed are
            ``"include"``.
        quantization: ``""`` for a float32 model; for one made by
            :func:`centermask2.export.quantize_int8`, a JSON description (scheme, calibration
            method and images, the layers kept in float32).
    """

    config_yaml: str
    class_names: list[str]
    category_ids: list[int]
    pixel_mean: list[float]
    pixel_std: list[float]
    input_format: str
    min_size: int
    max_size: int
    size_divisibility: int
    dynamic: bool
    input_size: tuple[int, int] | None
    batch_size: int | None
    input_dtype: str
    max_detections: int
    output_names: list[str]
    version: str
    padding: str = "include"
    quantization: str = ""

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (all strings; JSON where structured)."""
        return {
            _PREFIX + "config": self.config_yaml,
            _PREFIX + "class_names": json.dumps(list(self.class_names)),
            _PREFIX + "category_ids": json.dumps([int(c) for c in self.category_ids]),
            _PREFIX + "pixel_mean": json.dumps([float(v) for v in self.pixel_mean]),
            _PREFIX + "pixel_std": json.dumps([float(v) for v in self.pixel_std]),
            _PREFIX + "input_format": str(self.input_format),
            _PREFIX + "min_size_test": str(int(self.min_size)),
            _PREFIX + "max_size_test": str(int(self.max_size)),
            _PREFIX + "size_divisibility": str(int(self.size_divisibility)),
            _PREFIX + "input_mode": "dynamic" if self.dynamic else "static",
            _PREFIX + "input_size": "" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]}",
            _PREFIX + "batch_size": "" if self.batch_size is None else str(int(self.batch_size)),
            _PREFIX + "input_dtype": self.input_dtype,
            _PREFIX + "max_detections": str(int(self.max_detections)),
            _PREFIX + "output_names": json.dumps(list(self.output_names)),
            _PREFIX + "version": self.version,
            _PREFIX + "padding": self.padding,
            **({_PREFIX + "quantization": self.quantization} if self.quantization else {}),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "the model") -> ModelMetadata:
        """Parse ``metadata_props`` (see :meth:`to_props`).

        Raises:
            InputError: a key is missing or malformed; the message names it and ``source``.
        """
        if _PREFIX + "output_names" not in props:
            raise InputError(f"{source} has no centermask2 metadata; export it with convert_model_into_onnx.py")

        def get(key: str, parse=str, expected: str = ""):  # noqa: ANN001 - a converter
            if _PREFIX + key not in props:
                raise InputError(f"{source}: metadata key {_PREFIX + key!r} is missing; re-export the model")
            text = props[_PREFIX + key]
            try:
                if not isinstance(text, str):
                    raise ValueError("not text")
                return parse(text)
            except (ValueError, TypeError) as exc:
                why = f"expected {expected}" if expected and not isinstance(exc, _NotJson) else str(exc)
                raise InputError(
                    f"{source}: metadata {_PREFIX + key!r} = {str(text)[:80]!r} is malformed ({why}); re-export the model"
                ) from None

        def json_value(text: str) -> Any:
            try:
                return parse_json_text(text, "the value", "JSON value")
            except InputError as exc:
                raise _NotJson(str(exc)) from None

        def texts(text: str) -> list[str]:
            value = json_value(text)
            if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                raise ValueError("a list of names")
            return value

        def integers(text: str) -> list[int]:
            value = json_value(text)
            if not (isinstance(value, list) and value and all(type(v) is int for v in value)):
                raise ValueError("a list of integers")
            return value

        def three_numbers(text: str, positive: bool = False) -> list[float]:
            value = json_value(text)
            if not (isinstance(value, list) and len(value) == 3
                    and all(type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in value)):
                raise ValueError("three numbers")
            return [float(v) for v in value]

        def number(text: str, minimum: int, maximum: int) -> int:
            if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= maximum:
                raise ValueError(f"an integer from {minimum} to {maximum}")
            return int(text)

        def choice(*choices: str):  # noqa: ANN202 - a converter
            def parse(text: str) -> str:
                if text not in choices:
                    raise ValueError(f"one of {', '.join(choices)}")
                return text

            return parse

        dynamic = get("input_mode", choice("static", "dynamic"), "static or dynamic") == "dynamic"

        def size(text: str) -> tuple[int, int] | None:
            if dynamic and not text:
                return None
            parts = text.split("x")
            if len(parts) != 2:
                raise ValueError("HxW")
            return number(parts[0], 1, _MAX_SIDE), number(parts[1], 1, _MAX_SIDE)

        def batch(text: str) -> int | None:
            return None if dynamic and not text else number(text, 1, _MAX_BATCH)

        class_names = get("class_names", texts, "a JSON list of names")
        category_ids = get("category_ids", integers, "a list of integers")
        if len(category_ids) != len(class_names) or len(set(category_ids)) != len(category_ids):
            raise InputError(f"{source}: metadata gives {len(class_names)} class names and {len(category_ids)} category "
                             "ids, which must be as many and different; re-export the model")
        return cls(
            config_yaml=get("config"),
            class_names=class_names,
            category_ids=category_ids,
            pixel_mean=get("pixel_mean", three_numbers, "a JSON list of three finite numbers"),
            pixel_std=get("pixel_std", lambda t: three_numbers(t, positive=True),
                          "a JSON list of three finite numbers > 0"),
            input_format=get("input_format", choice("BGR", "RGB"), "BGR or RGB"),
            min_size=get("min_size_test", lambda t: number(t, 0, _MAX_SIDE), f"an integer from 0 to {_MAX_SIDE}"),
            max_size=get("max_size_test", lambda t: number(t, 1, _MAX_SIDE), f"an integer from 1 to {_MAX_SIDE}"),
            size_divisibility=get("size_divisibility", lambda t: number(t, 0, 1024), "an integer from 0 to 1024"),
            dynamic=dynamic,
            input_size=get("input_size", size, "HxW, two positive integers" + ("" if dynamic else ", for a static model")),
            batch_size=get("batch_size", batch, f"an integer from 1 to {_MAX_BATCH}"),
            input_dtype=get("input_dtype", choice(*INPUT_DTYPES), " or ".join(INPUT_DTYPES)),
            max_detections=get("max_detections", lambda t: number(t, 1, _MAX_DETECTIONS),
                               f"an integer from 1 to {_MAX_DETECTIONS}"),
            output_names=get("output_names", texts, "a JSON list of names"),
            version=get("version"),
            # older exports have no key and include the padding
            padding=get("padding", choice(*PADDING_MODES)) if _PREFIX + "padding" in props else "include",
            quantization=get("quantization") if _PREFIX + "quantization" in props else "",
        )


@dataclass(frozen=True)
class PanopticSettings:
    """How a panoptic model's outputs become panoptic segments (``MODEL.META_ARCHITECTURE:
    PanopticFPN``): detectron2's combination thresholds and the semantic output's geometry.

    Attributes:
        overlap_thresh, stuff_area_limit, instances_confidence_thresh: ``MODEL.PANOPTIC_FPN.COMBINE``.
        common_stride: the ``sem_seg`` output's stride (``MODEL.SEM_SEG_HEAD.COMMON_STRIDE``).
        size_divisibility: each image's padded extent is a multiple of it.
    """

    overlap_thresh: float
    stuff_area_limit: float
    instances_confidence_thresh: float
    common_stride: int
    size_divisibility: int

    @classmethod
    def defaults(cls) -> PanopticSettings:
        """detectron2's defaults, those of every official Panoptic-CenterMask config."""
        return cls(overlap_thresh=0.5, stuff_area_limit=4096, instances_confidence_thresh=0.5, common_stride=4,
                   size_divisibility=32)

    @classmethod
    def from_model(cls, model_path: str | os.PathLike) -> PanopticSettings | None:
        """The settings an exported model's metadata gives (None for an instance model)."""
        from .config.config import parse_yaml_text

        meta = read_metadata(model_path)
        try:
            cfg = parse_yaml_text(meta.config_yaml, "the config metadata") or {}
        except InputError as exc:
            raise InputError(f"{os.fspath(model_path)!r}: {exc}; re-export it") from exc
        return cls.from_config(cfg if isinstance(cfg, dict) else {}, meta.size_divisibility)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], size_divisibility: int) -> PanopticSettings | None:
        """The settings of a resolved config (a :class:`~centermask2.config.CfgNode` or the dict of an
        exported model's config YAML); None for an instance-only model."""
        model = cfg.get("MODEL") or {}
        if model.get("META_ARCHITECTURE") != "PanopticFPN":
            return None
        try:
            combine = model["PANOPTIC_FPN"]["COMBINE"]
            return cls(
                overlap_thresh=float(combine["OVERLAP_THRESH"]),
                stuff_area_limit=float(combine["STUFF_AREA_LIMIT"]),
                instances_confidence_thresh=float(combine["INSTANCES_CONFIDENCE_THRESH"]),
                common_stride=int(model["SEM_SEG_HEAD"]["COMMON_STRIDE"]),
                size_divisibility=int(size_divisibility),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the panoptic settings of the model's config are malformed ({exc!r}); re-export it") from exc


def _load_proto(model_path: str | os.PathLike):  # noqa: ANN202 - onnx.ModelProto
    import onnx

    path = check_input_file(model_path, "ONNX model")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends
        raise InputError(f"{str(path)!r} is not an ONNX model: {exc}") from exc


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """Read the settings an exported model carries.

    Raises:
        MissingFileError: no such file.
        InputError: not an ONNX model, or not exported by this toolkit.
    """
    proto = _load_proto(model_path)
    props = {p.key: p.value for p in proto.metadata_props}
    return ModelMetadata.from_props(props, repr(os.fspath(model_path)))


def model_output_specs(model_path: str | os.PathLike) -> list[OutputSpec]:
    """Per-image layout (``[1, ...]`` shapes) of an exported model's outputs, in model order.

    Names and dtypes come from the ONNX graph outputs. Shapes come from the graph when all
    non-batch dimensions are fixed (static exports), else from the metadata's
    ``max_detections`` with the standard layout (see :func:`default_output_specs`).

    Raises:
        MissingFileError / InputError: not a model exported by this toolkit.
    """
    from onnx import helper

    proto = _load_proto(model_path)
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, repr(os.fspath(model_path)))
    defaults = {s.name: s for s in default_output_specs(meta.max_detections)}
    specs: list[OutputSpec] = []
    for k, out in enumerate(proto.graph.output):
        tensor_type = out.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if dims and all(d is not None for d in dims[1:]):
            shape = [1, *dims[1:]]
        elif out.name in defaults:
            shape = list(defaults[out.name].shape)
        else:
            raise InputError(
                f"{os.fspath(model_path)!r}: output {out.name!r} has a dynamic shape {dims} that cannot be "
                "stored per image; export a static model with convert_model_into_onnx.py"
            )
        specs.append(OutputSpec(index=k, name=out.name, dtype=dtype, shape=shape))
    return specs


def check_detections(
    outputs: Mapping[str, np.ndarray],
    *,
    num_classes: int | None = None,
    where: str = "the model's outputs",
    hint: str = "",
    error: type[CenterMask2Error] = BackendError,
) -> int:
    """Check one image's model outputs before anything uses them; return its number of detections.

    The one validation every path runs (image mode and Ray through
    :class:`~centermask2.engine.loop.InferJob`, ``--bins`` post-processing through
    :func:`~centermask2.offline.postprocess.decode_image_outputs`): ``num_detections`` a count in
    [0, K]; ``scores``, ``classes``, ``mask_scores`` of K rows, ``masks`` of K (or K x 1) M x M;
    the first ``num_detections`` rows of ``boxes``, ``scores``, ``mask_scores`` and ``masks``
    finite, their ``classes`` whole numbers in [0, ``num_classes``); a ``sem_seg`` output
    [C, H, W] finite everywhere. Rows past ``num_detections`` are padding and may hold anything.

    Args:
        outputs: one image's outputs by name, without the batch dimension: ``boxes`` [K, 4],
            ``scores`` [K], ``classes`` [K], ``num_detections`` (one value), optional ``masks``,
            ``mask_scores`` and ``sem_seg``.
        num_classes: the model's classes (None: not checked).
        where: names the image or files in the message.
        hint: what to do about it, appended to the message.
        error: the error to raise: :class:`~centermask2.errors.BackendError` where a corrupt model
            stops the run (image mode), :class:`~centermask2.errors.ItemError` where the image is
            skipped (a corrupt ``.bin``).

    Raises:
        ``error``: the message names ``where``, the output and what is wrong with it.
    """

    def fail(problem: str) -> None:
        raise error(f"{where}: {problem}" + (f"; {hint}" if hint else ""))

    for name in ("boxes", "scores", "classes", "num_detections"):
        if name not in outputs:
            fail(f"there is no {name!r} output (it has {sorted(outputs)})")
    boxes = np.asarray(outputs["boxes"])
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        fail(f"boxes has shape {boxes.shape}, expected (K, 4)")
    k = boxes.shape[0]
    count = np.asarray(outputs["num_detections"]).reshape(-1)
    if count.size != 1:
        fail(f"num_detections has {count.size} values, expected one")
    value = count[0]
    if not np.isfinite(value) or value != np.floor(value):
        fail(f"num_detections is {value}, not a count")
    n = int(value)
    if not 0 <= n <= k:
        fail(f"num_detections is {n}, outside [0, {k}]")
    rows = {"scores": (k,), "classes": (k,), "mask_scores": (k,)}
    for name, shape in rows.items():
        if name in outputs and np.shape(outputs[name]) != shape:
            fail(f"{name} has shape {np.shape(outputs[name])}, expected {shape}")
    if "masks" in outputs:
        masks = np.asarray(outputs["masks"])
        square = masks.ndim in (3, 4) and masks.shape[-1] == masks.shape[-2] and (masks.ndim == 3 or masks.shape[1] == 1)
        if not square or masks.shape[0] != k:
            fail(f"masks has shape {masks.shape}, expected ({k}, M, M)")
    for name in ("boxes", "scores", "mask_scores", "masks"):
        if name in outputs and not np.isfinite(np.asarray(outputs[name])[:n]).all():
            fail(f"{name} of the first {n} detection(s) hold NaN or infinite values")
    classes = np.asarray(outputs["classes"])[:n]
    if classes.dtype.kind == "f" and not (np.isfinite(classes) & (classes == np.floor(classes))).all():
        fail("classes must be whole numbers, got " + str(classes[~(np.isfinite(classes) & (classes == np.floor(classes)))][0]))
    if classes.dtype.kind not in "iuf":
        fail(f"classes has dtype {classes.dtype}, expected integers")
    if num_classes is not None and n:
        bad = (classes < 0) | (classes >= num_classes)
        if bad.any():
            fail(f"classes must be in [0, {num_classes}), got {classes[bad][0]:g}")
    if SEM_SEG_OUTPUT in outputs:
        sem_seg = np.asarray(outputs[SEM_SEG_OUTPUT])
        if sem_seg.ndim != 3:
            fail(f"{SEM_SEG_OUTPUT} has shape {sem_seg.shape}, expected (C, H, W)")
        if not np.isfinite(sem_seg).all():
            fail(f"{SEM_SEG_OUTPUT} holds NaN or infinite values")
    return n
