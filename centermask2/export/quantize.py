"""Post-training static int8 quantization of an exported model (ONNX Runtime's QDQ format).

The result is still one standard-operator ``.onnx`` (``QuantizeLinear`` / ``DequantizeLinear``
pairs around the quantized layers), with the float32 model's metadata plus a
``centermask2.quantization`` entry, so every stage reads it as it reads the float32 model:
``tester.py --backend onnx`` or ``--backend openvino`` (both run QDQ graphs with int8 kernels),
the ``.bin`` pipeline (inputs and outputs keep their dtypes: the outputs stay float32).

What is quantized: the convolutions, transposed convolutions and fully connected layers
(``Conv``, ``ConvTranspose``, ``Gemm``) with per-channel int8 weights and uint8 activations
calibrated on the user's images. What stays float32: everything else (box decoding, NMS,
RoIAlign, the sigmoids, the padding-invariance masks, GroupNorm statistics) and, by default, the
last layer of every head (:data:`DEFAULT_KEEP_FP32`), whose outputs are scores and box offsets.
The accuracy cost is measured on the sample model in the README, not assumed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import read_metadata
from ..errors import InputError, MissingDependencyError
from ..fileio import atomic_write_bytes

__all__ = ["CALIBRATION_METHODS", "DEFAULT_KEEP_FP32", "QuantizeSettings", "QuantizeSummary", "quantize_int8"]

logger = logging.getLogger(__name__)

#: ``--method`` -> ONNX Runtime's calibration method name
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
#: module names (regular expression, searched in each layer's module path) kept in float32 by
#: default: the FCOS predictors (class logits, box offsets, centerness), the mask predictor and
#: the MaskIoU output and the semantic head's predictor (panoptic models)
DEFAULT_KEEP_FP32 = r"(cls_logits|bbox_pred|ctrness|mask_head\.predictor|maskiou_head\.maskiou|sem_seg_head\.predictor)$"
#: operators whose weights and inputs are quantized
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class QuantizeSettings:
    """How to quantize.

    Attributes:
        method: a key of :data:`CALIBRATION_METHODS`. ``percentile`` (the default) lost the
            least AP on the sample model in every runtime (README); all three take about as long.
        keep_fp32: regular expression of module paths (e.g. ``roi_heads.mask_head.predictor``)
            whose layers stay float32; ``""`` quantizes every layer of :data:`QUANTIZED_OPS`.
    """

    method: str = "percentile"
    keep_fp32: str = DEFAULT_KEEP_FP32

    def validate(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise InputError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        try:
            re.compile(self.keep_fp32)
        except re.error as exc:
            raise InputError(f"--keep-fp32 {self.keep_fp32!r} is not a regular expression: {exc}") from None


@dataclass
class QuantizeSummary:
    """What :func:`quantize_int8` did."""

    output: Path
    calibration_images: int
    quantized_layers: int
    kept_fp32: list[str] = field(default_factory=list)
    size_mb: float = 0.0
    source_size_mb: float = 0.0

    def format(self) -> str:
        return (
            f"Wrote {self.output} ({self.size_mb:.1f} MB, from {self.source_size_mb:.1f} MB): "
            f"{self.quantized_layers} layers int8, calibrated on {self.calibration_images} images; "
            f"kept float32: {', '.join(self.kept_fp32) or 'none'}"
        )


class _QuietQuantizer(logging.Filter):
    """ONNX Runtime's quantizer narrates on the root logger (a line per shared bias it copies,
    advice to pre-process); keep its errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Keep the quantizer's narration off the terminal: its log records below ERROR, and what its
    histogram calibrators ``print`` (a line per image), which goes to this module's debug log."""
    import io

    quiet = _QuietQuantizer()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
        if printed.getvalue().strip():
            logger.debug("ONNX Runtime's quantizer printed:\n%s", printed.getvalue().rstrip())


def _module_path(node: Any) -> str:
    """The PyTorch module a node comes from (``proposal_generator.fcos_head.cls_logits``), read
    from the exporter's ``namespace`` node metadata; ``""`` when absent."""
    for prop in node.metadata_props:
        if prop.key == "namespace":
            found = re.findall(r"model\.([\w.]+):", prop.value)
            return found[-1] if found else ""
    return ""


def _is_mask_expansion(node: Any, initializers: dict[str, Any]) -> bool:
    """The padding-invariance masks are 1x1 convolutions of a 0/1 plane with ones
    (:mod:`centermask2.modeling.layers.padding`): exact in float32, nothing to gain in int8."""
    from onnx import numpy_helper

    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
        return False
    w = numpy_helper.to_array(initializers[node.input[1]])
    return w.ndim == 4 and w.shape[1:] == (1, 1, 1) and bool(np.all(w == 1))


def _plan(proto: Any, keep_fp32: str) -> tuple[list[str], list[str], int]:
    """Rename initializers and choose the layers to leave alone.

    ONNX Runtime's quantizer names per-consumer copies of a shared bias ``<name><k>``, which can
    collide with an existing tensor of the exporter's ``val_<n>`` scheme (``val_242`` shared by
    four convolutions becomes ``val_2422``, an existing activation); a suffix on every
    initializer makes such names unique.

    Returns:
        node names to exclude, module paths kept float32, number of layers that will be quantized.
    """
    renamed = {init.name: init.name + "__w" for init in proto.graph.initializer}
    for init in proto.graph.initializer:
        init.name = renamed[init.name]
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    for out in proto.graph.output:
        if out.name in renamed:  # an initializer returned as an output: never in our graphs
            raise InputError(f"graph output {out.name!r} is a constant; re-export the model")
    initializers = {init.name: init for init in proto.graph.initializer}
    keep = re.compile(keep_fp32) if keep_fp32 else None
    exclude: list[str] = []
    kept: list[str] = []
    quantized = 0
    for node in proto.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        module = _module_path(node)
        if _is_mask_expansion(node, initializers):
            exclude.append(node.name)
        elif keep is not None and module and keep.search(module):
            exclude.append(node.name)
            if module not in kept:
                kept.append(module)
        else:
            quantized += 1
    return exclude, kept, quantized


def quantize_int8(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    calibration_images: Sequence[str | os.PathLike],
    settings: QuantizeSettings | None = None,
    *,
    progress: bool = True,
) -> QuantizeSummary:
    """Write an int8 QDQ copy of an exported float32 model, calibrated on ``calibration_images``.

    Each image is read and resized by the model's own rules (its metadata), padded as the model
    takes it (a static model's size, else a multiple of the size divisibility) and run once.

    Args:
        model_path: a float32 ``.onnx`` from ``convert_model_into_onnx.py`` (static or dynamic).
        output: the ``.onnx`` to write (atomically).
        calibration_images: image files (a few hundred like the data the model will see; tens
            already give stable ranges on the sample model).
        settings: method and float32 layers.
        progress: a progress bar over the calibration images.

    Raises:
        MissingDependencyError: ONNX Runtime's quantization tools are missing.
        InputError: no images, an already quantized model, a bad setting.
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:
        raise MissingDependencyError("int8 quantization needs onnx and onnxruntime: pip install onnx onnxruntime") from exc
    from tqdm import tqdm

    from ..data.spec import InputSpec
    from ..data.transforms import load_and_resize, pad_batch

    settings = settings or QuantizeSettings()
    settings.validate()
    meta = read_metadata(model_path)
    if meta.quantization:
        raise InputError(f"{os.fspath(model_path)!r} is already quantized; quantize the float32 export instead")
    if not calibration_images:
        raise InputError("no calibration images: give a folder with images like those the model will see")
    spec = InputSpec.from_metadata(meta)
    proto = onnx.load(os.fspath(model_path))
    exclude, kept, quantized = _plan(proto, settings.keep_fp32)
    images = [Path(p) for p in calibration_images]

    class _Reader(CalibrationDataReader):
        """One image per ``get_next``. ``set_range`` is ONNX Runtime's hook for calibrating in
        strides: the histogram calibrators stack each tensor's values over all the images they
        are given, which fails where shapes differ from image to image (a dynamic model's maps,
        the mask heads' per-detection tensors everywhere), so they are given one at a time."""

        def __init__(self) -> None:
            self._bar = tqdm(total=len(images), unit="img", desc="calibration", disable=not progress)
            self._items: Iterator[Path] = iter(images)

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._items = iter(images[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self._items, None)
            if path is None:
                if self._bar.n >= len(images):
                    self._bar.close()
                return None
            self._bar.update(1)
            batch, sizes = pad_batch([load_and_resize(path, spec)[0]], spec)
            if meta.batch_size and meta.batch_size > 1:  # a static batch: repeat the image
                batch, sizes = np.repeat(batch, meta.batch_size, 0), np.repeat(sizes, meta.batch_size, 0)
            return {"images": batch.astype(meta.input_dtype), "image_sizes": sizes}

    logger.info(
        "Quantizing %s: %d layers int8 (%s calibration on %d images), %d kept float32",
        os.fspath(model_path), quantized, settings.method, len(images), len(kept),
    )
    with tempfile.TemporaryDirectory(prefix="centermask2-int8-") as tmp:
        staged, result = Path(tmp) / "renamed.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, os.fspath(staged))
        del proto
        with _quiet_quantizer():
            quantize_static(
                os.fspath(staged),
                os.fspath(result),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[settings.method]),
                nodes_to_exclude=exclude,
                # one image per pass (see _Reader); minmax ranges merge exactly, so they are the same
                extra_options={"CalibStridedMinMax": 1},
            )
        quantized_proto = onnx.load(os.fspath(result))
    bad = sorted({(n.domain, n.op_type) for n in quantized_proto.graph.node if n.domain not in ("", "ai.onnx")})
    if bad:
        raise RuntimeError(f"the quantized graph has operators outside the default ONNX domain: {bad}")
    description = {
        "scheme": "int8 QDQ (ONNX Runtime), per-channel int8 weights, uint8 activations",
        "ops": list(QUANTIZED_OPS),
        "method": settings.method,
        "calibration_images": len(images),
        "kept_fp32": kept,
    }
    props = {p.key: p.value for p in quantized_proto.metadata_props}
    props.update(replace(meta, quantization=json.dumps(description)).to_props())
    del quantized_proto.metadata_props[:]
    for key, value in props.items():
        entry = quantized_proto.metadata_props.add()
        entry.key, entry.value = key, value
    output = Path(output)
    atomic_write_bytes(quantized_proto.SerializeToString(), output)
    return QuantizeSummary(
        output=output,
        calibration_images=len(images),
        quantized_layers=quantized,
        kept_fp32=kept,
        size_mb=output.stat().st_size / 1e6,
        source_size_mb=Path(model_path).stat().st_size / 1e6,
    )
