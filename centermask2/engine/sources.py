"""Opening a model: :func:`open_model` gives a ready backend plus how to feed it, for any runtime.

One factory for PyTorch (a config and its checkpoint), ONNX Runtime and OpenVINO (an exported
``.onnx``, whose metadata gives every setting). Every stage script, tool and benchmark opens its
model here; :class:`SourceRecipe` is the picklable form of one call, so a worker on another
machine (a Ray actor) opens the same model from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..contract import PanopticSettings
from ..data.categories import category_mapping
from ..data.spec import InputSpec
from ..errors import InputError
from ..fileio import file_digest, text_digest
from .backend import Backend

__all__ = ["RUNTIMES", "ModelSource", "SourceRecipe", "open_model", "torch_model_source"]

logger = logging.getLogger(__name__)


def _config_digest(config_yaml: str) -> str:
    """Digest of a resolved config, all keys but ``MODEL.WEIGHTS`` (the file's content is the
    identity's ``model``, so a moved checkpoint is the same run)."""
    from ..config.config import parse_yaml_text

    data = parse_yaml_text(config_yaml, "the model's config") or {}
    if not isinstance(data, dict):
        raise InputError(f"the model's config is not a mapping of keys but {type(data).__name__}; re-export the model")
    model = data.get("MODEL")
    if isinstance(model, dict):
        model.pop("WEIGHTS", None)
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
        recipe: how it was opened (:func:`open_model`'s arguments), for workers elsewhere.
        panoptic: for a panoptic model (its ``sem_seg`` output), how its outputs become panoptic
            segments; None for an instance-only model.
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
    recipe: SourceRecipe | None = None
    panoptic: PanopticSettings | None = None

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


def _open_torch(
    config_file: str | os.PathLike,
    opts: Sequence[str] = (),
    *,
    pad_to: tuple[int, int] | None = None,
    padding: str = "ignore",
    batch_size: int | None = None,
    threads: int | None = None,
    allow_incomplete: bool = False,
) -> ModelSource:
    """Build the PyTorch model of a config and load ``MODEL.WEIGHTS`` (a local file); the options
    as :func:`torch_model_source`."""
    import torch

    from ..checkpoint import check_weights_path, load_weights
    from ..config import load_config
    from ..modeling import build_model

    cfg = load_config(config_file, opts)
    check_weights_path(cfg.MODEL.WEIGHTS)
    if threads:
        torch.set_num_threads(threads)
    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, allow_incomplete=allow_incomplete)
    return torch_model_source(model, cfg, label=f"PyTorch {os.path.basename(os.fspath(config_file))}", pad_to=pad_to,
                              padding=padding, batch_size=batch_size)


def torch_model_source(
    model: Any,
    cfg: Any,
    *,
    label: str = "PyTorch",
    pad_to: tuple[int, int] | None = None,
    padding: str = "ignore",
    batch_size: int | None = None,
) -> ModelSource:
    """A source for a PyTorch model already in memory (e.g. during training) and its config; it has
    no recipe, so it runs in this process only.

    ``pad_to`` is a fixed (H, W) every image is padded to (as a static model sees it), or None for
    upstream's padding to the size divisibility. ``padding`` (one of
    :data:`~centermask2.contract.PADDING_MODES`) says whether padding beyond that affects results:
    ``"ignore"`` (default) gives each image its upstream result for any ``pad_to`` and batch.
    """
    from .torch_backend import TorchBackend

    spec = InputSpec.from_config(cfg, size_divisibility=model.size_divisibility, pad_to=pad_to)
    ids, names = category_mapping(None, int(cfg.MODEL.FCOS.NUM_CLASSES))
    return ModelSource(
        backend=TorchBackend(model, cfg.MODEL.DEVICE, padding=padding, path=cfg.MODEL.WEIGHTS or None),
        spec=spec,
        batch_size=batch_size or 1,
        category_ids=ids,
        class_names=names,
        label=label,
        model_file=str(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else None,
        config_yaml=cfg.dump(),
        padding=padding,
        panoptic=PanopticSettings.from_config(cfg, model.size_divisibility),
    )


def _open_onnx(
    model_path: str | os.PathLike,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    batch_size: int | None = None,
    runtime: str = "onnxruntime",
    device: str = "CPU",
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
    requests: int = 1,
) -> ModelSource:
    """Open an exported model in ONNX Runtime (``runtime="onnxruntime"``, on ``provider``) or
    OpenVINO (``runtime="openvino"``, on ``device`` with ``precision``); every setting comes from
    its metadata."""
    name = os.path.basename(os.fspath(model_path))
    runtime_id = ""
    if runtime == "openvino":
        from .openvino_backend import OpenVINOBackend

        backend = OpenVINOBackend(model_path, device=device, threads=threads, precision=precision, cache_dir=cache_dir,
                                  requests=requests)
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
        panoptic=PanopticSettings.from_model(model_path),
    )


#: the runtimes :func:`open_model` opens: the PyTorch model of a config, or an exported ``.onnx`` in
#: ONNX Runtime or OpenVINO
RUNTIMES = ("torch", "onnxruntime", "openvino")
#: the options each runtime takes (everything else is refused by name)
_OPTIONS = {
    "torch": {"opts", "pad_to", "padding", "batch_size", "threads", "allow_incomplete"},
    "onnxruntime": {"provider", "threads", "batch_size"},
    "openvino": {"device", "precision", "threads", "batch_size", "cache_dir", "requests"},
}


def open_model(model: str | os.PathLike, runtime: str | None = None, **options: Any) -> ModelSource:
    """Open a model for inference in any runtime.

    Args:
        model: a config YAML (``runtime="torch"``: the weights are its ``MODEL.WEIGHTS``, or an
            ``opts`` override) or an exported ``.onnx`` (``"onnxruntime"`` or ``"openvino"``).
        runtime: one of :data:`RUNTIMES`; default ``"onnxruntime"`` for a ``.onnx`` file, else
            ``"torch"``.
        **options: ``threads``, ``batch_size`` everywhere; torch: ``opts`` (``KEY VALUE`` config
            overrides), ``pad_to`` ((H, W) every image is padded to), ``padding``
            (:data:`~centermask2.contract.PADDING_MODES`), ``allow_incomplete`` (missing weights);
            onnxruntime: ``provider`` (``cpu``, ``cuda``, ``tensorrt``); openvino: ``device``,
            ``precision`` (``fp32``, ``bf16``, ``fp16``), ``cache_dir``, ``requests`` (infer requests at
            once: 1, OpenVINO's latency hint; more, or 0 for OpenVINO's choice, its throughput hint).

    Returns:
        the :class:`ModelSource`; its ``recipe`` reopens the same model elsewhere.

    Raises:
        InputError: an unknown runtime, or an option that runtime does not take.
        MissingFileError, MissingDependencyError, BackendError: as the runtime's backend.
    """
    if runtime is None:
        runtime = "onnxruntime" if os.fspath(model).lower().endswith(".onnx") else "torch"
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    given = {k: v for k, v in options.items() if v is not None}
    if runtime == "onnxruntime" and given.pop("precision", "fp32") != "fp32":
        raise InputError(
            f"--precision {options['precision']} is for --backend openvino; ONNX Runtime runs the model's own "
            "precision (export an int8 model, or use OpenVINO for bf16/fp16)"
        )
    foreign = sorted(set(given) - _OPTIONS[runtime])
    if foreign:
        raise InputError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not an option of the "
                         f"{runtime} runtime (it takes {', '.join(sorted(_OPTIONS[runtime]))})")
    if runtime == "torch":
        opts = given.pop("opts", ())
        source = _open_torch(model, opts, **given)
    else:
        source = _open_onnx(model, runtime=runtime, **given)
    source.recipe = SourceRecipe(os.fspath(model), runtime, options)
    return source


@dataclass(frozen=True)
class SourceRecipe:
    """How to open a model anywhere: :func:`open_model`'s arguments (picklable: a Ray actor opens its
    backend from it on its own node, never from a pickled model).

    Attributes:
        model: the config YAML or ``.onnx``; runtime: one of :data:`RUNTIMES`.
        options: :func:`open_model`'s keyword arguments.
    """

    model: str
    runtime: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> ModelSource:
        """The source, with its backend ready."""
        return open_model(self.model, self.runtime, **dict(self.options))

    @property
    def threads(self) -> int:
        """CPU threads of the backend (1 when not set: one actor, one core)."""
        return int(self.options.get("threads") or 1)

    def for_cluster(self, source: ModelSource | None = None) -> SourceRecipe:
        """This recipe with absolute paths (workers do not share the driver's working directory) and
        one thread when none was asked for; ``source`` is the driver's build of a torch recipe (its
        weights file, wherever the config or the overrides named it)."""
        options = {**self.options, "threads": self.threads}
        if self.runtime == "torch":
            opts = list(options.get("opts") or ())
            if source is not None and source.model_file:  # the last MODEL.WEIGHTS wins: the resolved file, absolute
                opts += ["MODEL.WEIGHTS", os.path.abspath(source.model_file)]
            options["opts"] = opts
        return replace(self, model=os.path.abspath(self.model), options=options)
