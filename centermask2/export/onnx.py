"""Export the whole CenterMask network to one ONNX graph of standard operators.

Uses PyTorch's maintained exporter, ``torch.onnx.export(..., dynamo=True)`` (torch.export +
onnxscript): it handles data-dependent shapes and lets the two named ops be lowered by our own
translation functions. The graph runs from raw pixels (normalization inside) through FCOS
decoding, NMS, RoIAlign, the mask head and the MaskIoU head, and returns fixed-size padded
outputs (:data:`centermask2.modeling.OUTPUT_NAMES`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..modeling import OUTPUT_NAMES, CenterMask
from ..utils import atomic_write_bytes

__all__ = [
    "INPUT_NAMES",
    "ExportSettings",
    "OnnxExportModule",
    "export_onnx",
    "build_metadata",
    "read_metadata",
    "ModelMetadata",
]

logger = logging.getLogger(__name__)

INPUT_NAMES = ("images", "image_sizes")
_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
#: largest dynamic height/width, in multiples of the size divisibility
_MAX_DYNAMIC_BLOCKS = 256


@dataclass(frozen=True)
class ExportSettings:
    """What to export.

    Attributes:
        input_size: (H, W) of the static form; with ``dynamic`` only the sample input's size.
        batch_size: static batch size (and the sample's with ``dynamic``).
        dynamic: any batch size and any H, W that are multiples of the size divisibility.
        input_dtype: ``"uint8"`` or ``"float32"`` raw BGR pixels.
        opset: ONNX opset (>= 16).
    """

    input_size: tuple[int, int] = (1344, 1344)
    batch_size: int = 1
    dynamic: bool = False
    input_dtype: str = "uint8"
    opset: int = 17

    def validate(self, size_divisibility: int) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0 or h % size_divisibility or w % size_divisibility:
            raise ValueError(
                f"input size {h}x{w} must be positive multiples of the model's size divisibility "
                f"{size_divisibility} (e.g. {-(-h // size_divisibility) * size_divisibility}x"
                f"{-(-w // size_divisibility) * size_divisibility})"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.input_dtype not in _DTYPES:
            raise ValueError(f"input dtype must be one of {sorted(_DTYPES)}, got {self.input_dtype!r}")
        if self.opset < 16:
            raise ValueError(f"opset {self.opset} is too old: RoiAlign with half_pixel needs opset >= 16")


class OnnxExportModule(nn.Module):
    """Raw pixels in, tuple of outputs out: the function that becomes the ONNX graph."""

    def __init__(self, model: CenterMask) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        """
        Args:
            images (Tensor[B, 3, H, W] uint8 or float32): raw pixels, padded bottom/right (any value).
            image_sizes (Tensor[B, 2] int64): valid (h, w) of each image.

        Returns:
            the tensors of :data:`OUTPUT_NAMES`, in that order.
        """
        out = self.model(self.model.normalize(images, image_sizes), image_sizes)
        return tuple(out[name] for name in OUTPUT_NAMES)


@dataclass(frozen=True)
class ModelMetadata:
    """Settings an exported model carries (``metadata_props``), parsed."""

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


def build_metadata(
    model: CenterMask,
    cfg: Any,
    settings: ExportSettings,
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (all values strings, JSON where structured)."""
    return {
        "centermask2.config": cfg.dump(),
        "centermask2.class_names": json.dumps(list(class_names)),
        "centermask2.category_ids": json.dumps([int(c) for c in category_ids]),
        "centermask2.pixel_mean": json.dumps([float(v) for v in cfg.MODEL.PIXEL_MEAN]),
        "centermask2.pixel_std": json.dumps([float(v) for v in cfg.MODEL.PIXEL_STD]),
        "centermask2.input_format": str(cfg.INPUT.FORMAT),
        "centermask2.min_size_test": str(int(cfg.INPUT.MIN_SIZE_TEST)),
        "centermask2.max_size_test": str(int(cfg.INPUT.MAX_SIZE_TEST)),
        "centermask2.size_divisibility": str(model.size_divisibility),
        "centermask2.input_mode": "dynamic" if settings.dynamic else "static",
        "centermask2.input_size": "" if settings.dynamic else f"{settings.input_size[0]}x{settings.input_size[1]}",
        "centermask2.batch_size": "" if settings.dynamic else str(settings.batch_size),
        "centermask2.input_dtype": settings.input_dtype,
        "centermask2.max_detections": str(model.max_detections),
        "centermask2.output_names": json.dumps(list(OUTPUT_NAMES)),
        "centermask2.version": __version__,
    }


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """Read the settings an exported model carries.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX model, or not exported by this toolkit.
    """
    import onnx

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {str(path)!r}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ValueError(f"{str(path)!r} is not an ONNX model: {exc}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if "centermask2.output_names" not in props:
        raise ValueError(
            f"{str(path)!r} has no centermask2 metadata; export it with convert_model_into_onnx.py"
        )
    size = props["centermask2.input_size"]
    return ModelMetadata(
        config_yaml=props["centermask2.config"],
        class_names=json.loads(props["centermask2.class_names"]),
        category_ids=json.loads(props["centermask2.category_ids"]),
        pixel_mean=json.loads(props["centermask2.pixel_mean"]),
        pixel_std=json.loads(props["centermask2.pixel_std"]),
        input_format=props["centermask2.input_format"],
        min_size=int(props["centermask2.min_size_test"]),
        max_size=int(props["centermask2.max_size_test"]),
        size_divisibility=int(props["centermask2.size_divisibility"]),
        dynamic=props["centermask2.input_mode"] == "dynamic",
        input_size=tuple(int(v) for v in size.split("x")) if size else None,  # type: ignore[arg-type]
        batch_size=int(props["centermask2.batch_size"]) if props["centermask2.batch_size"] else None,
        input_dtype=props["centermask2.input_dtype"],
        max_detections=int(props["centermask2.max_detections"]),
        output_names=json.loads(props["centermask2.output_names"]),
        version=props["centermask2.version"],
    )


def _sample_inputs(settings: ExportSettings) -> tuple[Tensor, Tensor]:
    b = settings.batch_size
    h, w = settings.input_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), generator=gen, dtype=torch.uint8).to(_DTYPES[settings.input_dtype])
    sizes = torch.tensor([[h, w]] * b, dtype=torch.int64)
    return images, sizes


def export_onnx(
    model: CenterMask,
    cfg: Any,
    output: str | os.PathLike,
    settings: ExportSettings,
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    simplify: bool = False,
) -> Path:
    """Export ``model`` to ``output`` (one self-contained ``.onnx`` file, written atomically).

    Args:
        model: the network with weights loaded (eval mode, CPU).
        cfg: its config (stored in the metadata).
        output: path of the ``.onnx`` file.
        settings: shapes, dtype and opset.
        class_names, category_ids: dataset metadata per contiguous class.
        simplify: run onnxslim on the graph afterwards.

    Returns:
        the output path.
    """
    import onnx

    from .onnx_ops import translation_table
    from .opset import NATIVE_OPSET, downgrade_opset

    settings.validate(model.size_divisibility)
    if len(class_names) != len(category_ids):
        raise ValueError("class_names and category_ids must have the same length")
    module = OnnxExportModule(model.cpu().eval()).eval()
    sample = _sample_inputs(settings)
    dynamic_shapes = None
    if settings.dynamic:
        d = model.size_divisibility
        batch = torch.export.Dim("batch", min=1, max=1024)
        hb = torch.export.Dim("h_blocks", min=1, max=_MAX_DYNAMIC_BLOCKS)
        wb = torch.export.Dim("w_blocks", min=1, max=_MAX_DYNAMIC_BLOCKS)
        dynamic_shapes = {"images": {0: batch, 2: d * hb, 3: d * wb}, "image_sizes": {0: batch}}
    logger.info(
        "Exporting (%s, %s input, opset %d)...",
        "dynamic" if settings.dynamic else f"static {settings.batch_size}x3x{settings.input_size[0]}x{settings.input_size[1]}",
        settings.input_dtype,
        settings.opset,
    )
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            sample,
            dynamo=True,
            opset_version=max(settings.opset, NATIVE_OPSET),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=translation_table(),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    if settings.opset < NATIVE_OPSET:
        downgrade_opset(proto, settings.opset)
    if simplify:
        proto = _simplify(proto)
    for key, value in build_metadata(model, cfg, settings, class_names, category_ids).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    bad = sorted({(n.domain, n.op_type) for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if bad:
        raise RuntimeError(f"the exported graph has operators outside the default ONNX domain: {bad}")
    output = Path(output)
    atomic_write_bytes(proto.SerializeToString(), output)
    logger.info("Wrote %s (%.1f MB)", output, output.stat().st_size / 1e6)
    return output


def _simplify(proto: Any) -> Any:
    try:
        import onnxslim
    except ImportError:
        raise ImportError("--simplify needs onnxslim: pip install onnxslim") from None
    logger.info("Simplifying with onnxslim...")
    return onnxslim.slim(proto)
