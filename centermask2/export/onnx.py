"""Export the whole CenterMask network to one ONNX graph of standard operators.

Uses PyTorch's maintained exporter, ``torch.onnx.export(..., dynamo=True)`` (torch.export +
onnxscript): it handles data-dependent shapes and lets the two named ops be lowered by our own
translation functions. The graph runs from raw pixels (normalization inside) through FCOS
decoding, NMS, RoIAlign, the mask head and the MaskIoU head, and returns fixed-size padded
outputs (:data:`centermask2.modeling.OUTPUT_NAMES`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..contract import INPUT_DTYPES, INPUT_NAMES, PADDING_MODES, ModelMetadata
from ..errors import InputError, MissingDependencyError
from ..fileio import atomic_write_bytes
from ..modeling import CenterMask

__all__ = [
    "DEFAULT_OPSET",
    "DEFORM_CONV_OPSET",
    "ExportSettings",
    "OnnxExportModule",
    "build_metadata",
    "MIN_OPSET",
    "MAX_RUNNABLE_OPSET",
    "check_opset",
    "check_opset_range",
    "default_opset",
    "highest_opset",
    "model_nbytes",
    "export_onnx",
    "has_deformable_conv",
]

logger = logging.getLogger(__name__)

_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
assert tuple(_DTYPES) == INPUT_DTYPES
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
        opset: ONNX opset (>= 16; >= 19 for models with deformable convolutions).
        padding: one of :data:`~centermask2.contract.PADDING_MODES`: ``"ignore"`` (default) makes
            every image's result what upstream computes for it padded only to the size
            divisibility, whatever the input size and batch; ``"include"`` computes on the padded
            input as given.
    """

    input_size: tuple[int, int] = (1344, 1344)
    batch_size: int = 1
    dynamic: bool = False
    input_dtype: str = "uint8"
    opset: int = 17
    padding: str = "ignore"

    def validate(self, size_divisibility: int) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0 or h % size_divisibility or w % size_divisibility:
            raise InputError(
                f"input size {h}x{w} must be positive multiples of the model's size divisibility "
                f"{size_divisibility} (e.g. {-(-h // size_divisibility) * size_divisibility}x"
                f"{-(-w // size_divisibility) * size_divisibility})"
            )
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.input_dtype not in _DTYPES:
            raise InputError(f"input dtype must be one of {sorted(_DTYPES)}, got {self.input_dtype!r}")
        if self.padding not in PADDING_MODES:
            raise InputError(f"padding must be one of {', '.join(PADDING_MODES)}, got {self.padding!r}")
        check_opset_range(self.opset)


class OnnxExportModule(nn.Module):
    """Raw pixels in, tuple of outputs out: the function that becomes the ONNX graph."""

    def __init__(self, model: CenterMask, ignore_padding: bool = True) -> None:
        super().__init__()
        self.model = model
        self.ignore_padding = ignore_padding

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        """
        Args:
            images (Tensor[B, 3, H, W] uint8 or float32): raw pixels, padded bottom/right (any value).
            image_sizes (Tensor[B, 2] int64): valid (h, w) of each image.

        Returns:
            the tensors of the model's ``output_names`` (:data:`OUTPUT_NAMES`, then ``sem_seg`` for
            a panoptic model), in that order.
        """
        out = self.model(
            self.model.normalize(images, image_sizes), image_sizes, ignore_padding=self.ignore_padding, full_masks=True
        )
        return tuple(out[name] for name in self.model.output_names)


#: first opset with ``DeformConv``
DEFORM_CONV_OPSET = 19
#: opset of models without deformable convolutions unless asked otherwise
DEFAULT_OPSET = 17


#: oldest opset: RoiAlign with ``coordinate_transformation_mode="half_pixel"`` appears in opset 16
MIN_OPSET = 16


#: newest opset whose graph of this model ONNX Runtime runs: opset 22 renews ``RoiAlign`` (and
#: ``DeformConv``), which ONNX Runtime has no kernel for yet (checked with onnxruntime 1.32)
MAX_RUNNABLE_OPSET = 21


def highest_opset() -> int:
    """The newest opset the exporter writes: PyTorch's exporter writes opset 18 and converts it
    up with onnxscript's version converter (which knows opsets up to its own limit, and ``onnx``
    up to its own), and no further than :data:`MAX_RUNNABLE_OPSET`, so that the model runs."""
    import onnx

    try:
        from onnxscript.version_converter._version_converter import SUPPORTED_MAX_ONNX_OPSET as converter_max
    except ImportError:  # an onnxscript that does not say: what it surely knows
        converter_max = 18
    return int(min(onnx.defs.onnx_opset_version(), converter_max, MAX_RUNNABLE_OPSET))


def check_opset_range(opset: int) -> None:
    """Refuse an opset the exporter cannot write (before any work; PyTorch's exporter would fall
    back to opset 18 after a traceback).

    Raises:
        InputError: outside [:data:`MIN_OPSET`, :func:`highest_opset`]; the message gives the range.
    """
    top = highest_opset()
    if not MIN_OPSET <= opset <= top:
        why = ("RoiAlign with half_pixel sampling needs opset 16 or later" if opset < MIN_OPSET
               else "opset 22 renews RoiAlign, which ONNX Runtime cannot run yet" if top == MAX_RUNNABLE_OPSET
               else f"the installed onnx / onnxscript go up to opset {top}")
        raise InputError(f"--opset {opset} is not supported: this exporter writes opsets {MIN_OPSET} to {top} ({why}); "
                         f"the default is {DEFAULT_OPSET} ({DEFORM_CONV_OPSET} for _dcn_ models)")


def model_nbytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (about the size of its exported weights)."""
    tensors = [*model.parameters(), *model.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


def has_deformable_conv(model: nn.Module) -> bool:
    """True when ``model`` has deformable convolutions (the ``_dcn_`` configs)."""
    from ..modeling.layers import DeformConv2d

    return any(isinstance(m, DeformConv2d) for m in model.modules())


def default_opset(model: nn.Module) -> int:
    """The opset a model is exported at by default: 19 with deformable convolutions, else 17."""
    return DEFORM_CONV_OPSET if has_deformable_conv(model) else DEFAULT_OPSET


def check_opset(model: nn.Module, opset: int) -> None:
    """Refuse an opset that cannot express ``model``.

    Raises:
        InputError: deformable convolutions below opset 19.
    """
    if opset < DEFORM_CONV_OPSET and has_deformable_conv(model):
        raise InputError(
            f"opset {opset} cannot hold this model: it has deformable convolutions, which ONNX has "
            f"(as DeformConv) from opset {DEFORM_CONV_OPSET} on; use --opset {DEFORM_CONV_OPSET} (the default for "
            "_dcn_ models)"
        )


def build_metadata(
    model: CenterMask,
    cfg: Any,
    settings: ExportSettings,
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> ModelMetadata:
    """The settings an exported model carries (written as its ``metadata_props``)."""
    return ModelMetadata(
        config_yaml=cfg.dump(),
        class_names=list(class_names),
        category_ids=[int(c) for c in category_ids],
        pixel_mean=[float(v) for v in cfg.MODEL.PIXEL_MEAN],
        pixel_std=[float(v) for v in cfg.MODEL.PIXEL_STD],
        input_format=str(cfg.INPUT.FORMAT),
        min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size=int(cfg.INPUT.MAX_SIZE_TEST),
        size_divisibility=model.size_divisibility,
        dynamic=settings.dynamic,
        input_size=None if settings.dynamic else (int(settings.input_size[0]), int(settings.input_size[1])),
        batch_size=None if settings.dynamic else int(settings.batch_size),
        input_dtype=settings.input_dtype,
        max_detections=model.max_detections,
        output_names=list(model.output_names),
        version=__version__,
        padding=settings.padding,
    )


#: modules whose UserWarnings narrate the exporter's own internals, not the user's model
_EXPORTER_MODULES = r"(torch\.onnx|torch\.export|torch\._export|torch\.fx|torch\._dynamo|onnxscript|onnx_ir)(\..*)?"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide PyTorch's and onnxscript's internal deprecation notices during ``torch.onnx.export``.

    They concern PyTorch's own code (e.g. ``LeafSpec`` deprecations raised from ``copyreg``), not
    the user's model, and would be the only thing a user sees besides our progress lines.
    Warnings raised from our code (``centermask2``) are kept. The exporter's registry also logs
    that torchvision is missing, which does not matter: our ops have their own lowerings.
    """
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=_EXPORTER_MODULES)
            warnings.filterwarnings("default", module=r"centermask2(\..*)?")
            yield
    finally:
        registry_log.setLevel(level)


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

    from .lowering import decompose_only_where_needed
    from .onnx_ops import translation_table
    from .opset import NATIVE_OPSET, downgrade_opset

    settings.validate(model.size_divisibility)
    check_opset(model, settings.opset)
    if len(class_names) != len(category_ids):
        raise InputError("class_names and category_ids must have the same length")
    module = OnnxExportModule(model.cpu().eval(), ignore_padding=settings.padding == "ignore").eval()
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
    with torch.no_grad(), _quiet_exporter(), decompose_only_where_needed():
        program = torch.onnx.export(
            module,
            sample,
            dynamo=True,
            opset_version=max(settings.opset, NATIVE_OPSET),
            input_names=list(INPUT_NAMES),
            output_names=list(model.output_names),
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=translation_table(),
            external_data=False,
            verbose=False,
            optimize=False,
        )
        _optimize(program.model)
    proto = program.model_proto
    if settings.opset < NATIVE_OPSET:
        downgrade_opset(proto, settings.opset)
    if simplify:
        proto = _simplify(proto)
    for key, value in build_metadata(model, cfg, settings, class_names, category_ids).to_props().items():
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


def _optimize(model: Any) -> None:
    """The exporter's own graph clean-up (constant folding, dead code, shared initializers),
    without onnxscript's pattern rewrites: on the padding-invariant graphs those take minutes
    and change nothing ONNX Runtime does not fuse itself."""
    import onnx_ir.passes.common as common_passes
    from onnx_ir import passes
    from onnxscript.optimizer import _constant_folding

    passes.Sequential(
        common_passes.InlinePass(),
        passes.PassManager(
            [_constant_folding.FoldConstantsPass(
                shape_inference=True,
                input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
            ), common_passes.RemoveUnusedNodesPass(),
             common_passes.RemoveUnusedFunctionsPass(), common_passes.RemoveUnusedOpsetsPass()],
            steps=2, early_stop=True,
        ),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )(model)


def _simplify(proto: Any) -> Any:
    try:
        import onnxslim
    except ImportError as exc:
        raise MissingDependencyError("--simplify needs onnxslim: pip install onnxslim") from exc
    logger.info("Simplifying with onnxslim...")
    return onnxslim.slim(proto)
