"""Model sources: a ready backend plus how to feed it, from a checkpoint or an exported model.

Shared by the stage scripts so that ``tester.py`` and ``visualizer.py`` set up backends the
same way.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..data.categories import category_mapping
from ..data.spec import InputSpec
from ..errors import InputError
from ..fileio import file_digest, text_digest
from .backend import Backend

__all__ = ["ModelSource", "SourceRecipe", "torch_source", "onnx_source"]

logger = logging.getLogger(__name__)


def _config_digest(config_yaml: str) -> str:
    """Digest of a resolved config, all keys but ``MODEL.WEIGHTS`` (the file's content is the
    identity's ``model``, so a moved checkpoint is the same run)."""
    import yaml

    data = yaml.safe_load(config_yaml) or {}
    data.get("MODEL", {}).pop("WEIGHTS", None)
    return text_digest(json.dumps(data, sort_keys=True, default=str))


@dataclass
class ModelSource:
    """A ready backend and how to feed it.

    Attributes:
        backend: :class:`TorchBackend`, :class:`OnnxRuntimeBackend` or :class:`OpenVINOBackend`.
        spec: resize / padding rules for its input.
        batch_size: images per call.
        category_ids: dataset category id per contiguous class.
        class_names: class name per contiguous class.
        label: short description for logs and pictures.
        model_file: the checkpoint or ``.onnx`` the weights come from (None: not from a file).
        config_yaml: the resolved config (a model's own, for an exported model).
        padding: how padding beyond the size divisibility is treated
            (:data:`~centermask2.contract.PADDING_MODES`).
        runtime: for runtimes other than PyTorch and ONNX Runtime, which one and how it computes
            (e.g. ``"openvino CPU fp32"``); part of the identity.
    """

    backend: Backend
    spec: InputSpec
    batch_size: int
    category_ids: list[int]
    class_names: list[str]
    label: str
    model_file: str | None = None
    config_yaml: str = ""
    padding: str = "ignore"
    runtime: str = ""

    def identity(self) -> dict[str, str]:
        """What makes this source's outputs what they are; a resumed run must have the same.

        ``model``: SHA-256 of the checkpoint or ``.onnx`` (read here, only when asked: runs that
        do not resume need not hash a few hundred megabytes); ``config``: digest of the resolved
        config, every key but ``MODEL.WEIGHTS``; ``input``: the input rules and batch size;
        ``runtime``: OpenVINO's device and precision, where it runs the model.
        """
        identity = {
            "model": file_digest(self.model_file) if self.model_file else "",
            "config": _config_digest(self.config_yaml),
            "input": f"{self.spec}, batch {self.batch_size}, padding {self.padding}",
        }
        if self.runtime:
            identity["runtime"] = self.runtime
        return identity


def torch_source(
    config_file: str | os.PathLike,
    opts: Sequence[str] = (),
    *,
    pad_to: tuple[int, int] | None = None,
    padding: str = "ignore",
    batch_size: int | None = None,
    threads: int | None = None,
    allow_incomplete: bool = False,
) -> ModelSource:
    """Build the PyTorch model of a config and load ``MODEL.WEIGHTS`` (a local file).

    ``pad_to`` is a fixed (H, W) every image is padded to (as a static model sees it), or None for
    upstream's padding to the size divisibility. ``padding`` (one of
    :data:`~centermask2.contract.PADDING_MODES`) says whether padding beyond that affects results:
    ``"ignore"`` (default) gives each image its upstream result for any ``pad_to`` and batch.
    """
    import torch

    from ..checkpoint import check_weights_path, load_weights
    from ..config import load_config
    from ..modeling import build_model
    from .torch_backend import TorchBackend

    cfg = load_config(config_file, opts)
    check_weights_path(cfg.MODEL.WEIGHTS)
    if threads:
        torch.set_num_threads(threads)
    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, allow_incomplete=allow_incomplete)
    spec = InputSpec.from_config(cfg, size_divisibility=model.size_divisibility, pad_to=pad_to)
    ids, names = category_mapping(None, int(cfg.MODEL.FCOS.NUM_CLASSES))
    return ModelSource(
        backend=TorchBackend(model, cfg.MODEL.DEVICE, padding=padding),
        spec=spec,
        batch_size=batch_size or 1,
        category_ids=ids,
        class_names=names,
        label=f"PyTorch {os.path.basename(os.fspath(config_file))}",
        model_file=str(cfg.MODEL.WEIGHTS),
        config_yaml=cfg.dump(),
        padding=padding,
    )


def onnx_source(
    model_path: str | os.PathLike,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    batch_size: int | None = None,
    runtime: str = "onnxruntime",
    device: str = "CPU",
    precision: str = "fp32",
) -> ModelSource:
    """Open an exported model in ONNX Runtime (``runtime="onnxruntime"``, on ``provider``) or
    OpenVINO (``runtime="openvino"``, on ``device`` with ``precision``); every setting comes from
    its metadata."""
    name = os.path.basename(os.fspath(model_path))
    runtime_id = ""
    if runtime == "openvino":
        from .openvino_backend import OpenVINOBackend

        backend = OpenVINOBackend(model_path, device=device, threads=threads, precision=precision)
        label = f"OpenVINO {name} ({device}, {precision})"
        runtime_id = f"openvino {device} {precision}"
    elif runtime == "onnxruntime":
        if precision != "fp32":
            raise InputError(
                f"--precision {precision} is for --backend openvino; ONNX Runtime runs the model's own precision "
                "(export an int8 model, or use OpenVINO for bf16/fp16)"
            )
        from .onnxruntime_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(model_path, provider=provider, threads=threads)
        label = f"ONNX Runtime {name}"
    else:
        raise InputError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")
    meta = backend.metadata
    spec = InputSpec.from_metadata(meta)
    batch = batch_size or meta.batch_size or 1
    if meta.batch_size is not None and batch > meta.batch_size:
        raise InputError(
            f"{os.fspath(model_path)!r} is a static model with batch size {meta.batch_size}; batch size {batch} is too large"
        )
    return ModelSource(
        backend=backend,
        spec=spec,
        batch_size=batch,
        category_ids=list(meta.category_ids),
        class_names=list(meta.class_names),
        label=label,
        model_file=os.fspath(model_path),
        config_yaml=meta.config_yaml,
        padding=meta.padding,
        runtime=runtime_id,
    )


@dataclass(frozen=True)
class SourceRecipe:
    """How to build a :class:`ModelSource` anywhere: a builder of this module and its arguments
    (picklable: a Ray actor builds its backend from it on its own node, never from a pickled model).

    Attributes:
        builder: ``"torch"`` (:func:`~centermask2.engine.sources.torch_source`: config file and
            overrides) or ``"onnx"`` (:func:`~centermask2.engine.sources.onnx_source`: the
            ``.onnx`` and runtime settings).
        args, kwargs: the builder's arguments.
    """

    builder: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.builder not in ("torch", "onnx"):
            raise InputError(f"a source recipe's builder is 'torch' or 'onnx', got {self.builder!r}")

    def build(self) -> ModelSource:
        """The source, with its backend ready."""
        return (torch_source if self.builder == "torch" else onnx_source)(*self.args, **dict(self.kwargs))

    @property
    def threads(self) -> int:
        """CPU threads of the backend (1 when not set: one actor, one core)."""
        return int(self.kwargs.get("threads") or 1)

    def for_cluster(self, source: ModelSource | None = None) -> SourceRecipe:
        """This recipe with absolute paths (workers do not share the driver's working directory) and
        one thread when none was asked for; ``source`` is the driver's build of a ``"torch"`` recipe
        (its weights file, wherever the config or the overrides named it)."""
        kwargs = {**self.kwargs, "threads": self.threads}
        if self.builder == "onnx":
            return replace(self, args=(os.path.abspath(self.args[0]),), kwargs=kwargs)
        config_file, opts = self.args[0], list(self.args[1] if len(self.args) > 1 else ())
        if source is not None and source.model_file:  # the last MODEL.WEIGHTS wins: the resolved file, absolute
            opts += ["MODEL.WEIGHTS", os.path.abspath(source.model_file)]
        return replace(self, args=(os.path.abspath(config_file), opts), kwargs=kwargs)
