"""What every backend is, and the base the two ``.onnx`` runtimes share.

A backend runs the network: ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``. Inputs are
:data:`centermask2.contract.INPUT_NAMES`: ``images`` np.ndarray[B, 3, H, W] (raw pixels in the
model's input dtype, padded bottom/right) and ``image_sizes`` np.ndarray[B, 2] int64; outputs are
the model's ``output_names`` (:data:`centermask2.contract.OUTPUT_NAMES`, batch first). PyTorch
(:mod:`.torch_backend`), ONNX Runtime (:mod:`.onnxruntime_backend`) and OpenVINO
(:mod:`.openvino_backend`) look alike to the stages; :func:`centermask2.engine.open_model` opens
any of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..contract import INPUT_NAMES, OUTPUT_NAMES, read_metadata
from ..errors import InputError

if TYPE_CHECKING:
    from ..contract import ModelMetadata

__all__ = ["Backend", "OnnxFileBackend", "fill_static_batch"]


class Backend(Protocol):
    """Anything that runs the network.

    Attributes:
        path: the file the weights come from (a checkpoint or an ``.onnx``), None when the model
            was built in memory.
        metadata: an exported model's settings (:class:`~centermask2.contract.ModelMetadata`);
            None for the PyTorch model, whose settings are its config.
        input_dtype: dtype of the ``images`` input (``"uint8"`` or ``"float32"``).
        static_batch: the batch size a static model requires (shorter batches are filled and the
            fill dropped), None for any batch.
        output_names: the outputs ``run`` returns, in model order.
    """

    path: Path | None
    metadata: ModelMetadata | None
    input_dtype: str
    static_batch: int | None
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def fill_static_batch(images: np.ndarray, sizes: np.ndarray, static: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Fill a short last batch of a static-batch model with copies of its first image (the
    caller drops their outputs).

    Args:
        images: np.ndarray[B, 3, H, W]; sizes: np.ndarray[B, 2].
        static: the model's batch size (None: dynamic, nothing to do).

    Raises:
        InputError: more images than the model takes.
    """
    b = images.shape[0]
    if static is None or b == static:
        return images, sizes
    if b > static:
        raise InputError(f"this static model takes batches of {static}, got {b}")
    fill = static - b
    return (np.concatenate([images, np.repeat(images[:1], fill, axis=0)]),
            np.concatenate([sizes, np.repeat(sizes[:1], fill, axis=0)]))


class OnnxFileBackend:
    """An exported ``.onnx`` in some runtime: what ONNX Runtime and OpenVINO share.

    The metadata (:mod:`centermask2.contract`) gives every setting. Subclasses open the runtime's
    session in ``__init__`` after calling this one, call :meth:`_check_graph` with what the
    runtime sees, and implement :meth:`_infer`; :meth:`run` casts, fills a static batch and drops
    the fill.

    Args:
        model_path: the ``.onnx`` file.

    Raises:
        MissingFileError, InputError: no such file, or not a model this toolkit exported.
    """

    #: the runtime's name in messages
    runtime = "the runtime"

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.path = Path(model_path)
        self.metadata = read_metadata(self.path)
        self.input_dtype = self.metadata.input_dtype
        self.output_names: list[str] = list(self.metadata.output_names)

    @property
    def static_batch(self) -> int | None:
        """The batch size a static model requires, None for a dynamic one."""
        return None if self.metadata.dynamic else self.metadata.batch_size

    def _check_graph(self, inputs: dict[str, list[int | None]], outputs: list[str]) -> None:
        """The graph as the runtime sees it must be the one the metadata describes.

        Args:
            inputs: input name -> dims (None where dynamic); outputs: output names in order.

        Raises:
            InputError: other inputs or outputs, or a static input shape that disagrees with the
                metadata (edited metadata, or another model's).
        """
        where = repr(str(self.path))
        if sorted(inputs) != sorted(INPUT_NAMES):
            raise InputError(f"{where} has inputs {sorted(inputs)}, expected {sorted(INPUT_NAMES)}")
        if list(outputs) != self.output_names or tuple(outputs[: len(OUTPUT_NAMES)]) != OUTPUT_NAMES:
            raise InputError(f"{where} outputs {list(outputs)}, expected {self.output_names or list(OUTPUT_NAMES)}")
        meta, dims = self.metadata, inputs["images"]
        if meta.dynamic or len(dims) != 4:
            return
        want = [meta.batch_size, 3, *(meta.input_size or (None, None))]
        if any(d is not None and w is not None and d != w for d, w in zip(dims, want)):
            raise InputError(
                f"{where}: its metadata says input {want} but the graph takes {dims}; the metadata was "
                "edited or belongs to another model: re-export it with convert_model_into_onnx.py"
            )

    def _infer(self, images: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        """The runtime's call: full (filled) batch in, every output by name out."""
        raise NotImplementedError

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.ascontiguousarray(inputs["images"].astype(np.dtype(self.input_dtype), copy=False))
        sizes = np.ascontiguousarray(inputs["image_sizes"].astype(np.int64, copy=False))
        b = images.shape[0]
        images, sizes = fill_static_batch(images, sizes, self.static_batch)
        outs = self._infer(images, sizes)
        return {name: outs[name][:b] for name in self.output_names}
