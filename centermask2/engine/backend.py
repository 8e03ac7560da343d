"""What every backend is: ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``.

Inputs are :data:`centermask2.contract.INPUT_NAMES`: ``images`` np.ndarray[B, 3, H, W] (raw
pixels in the model's input dtype, padded bottom/right) and ``image_sizes`` np.ndarray[B, 2]
int64; outputs are :data:`centermask2.contract.OUTPUT_NAMES`. PyTorch
(:mod:`.torch_backend`), ONNX Runtime (:mod:`.onnxruntime_backend`) and OpenVINO
(:mod:`.openvino_backend`) look alike to the stages.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Backend", "fill_static_batch"]


class Backend(Protocol):
    """Anything that runs the network: ``run({"images", "image_sizes"}) -> outputs by name``.

    Attributes:
        input_dtype: dtype of the ``images`` input (``"uint8"`` or ``"float32"``).
    """

    input_dtype: str

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
        from ..errors import InputError

        raise InputError(f"this static model takes batches of {static}, got {b}")
    fill = static - b
    return (np.concatenate([images, np.repeat(images[:1], fill, axis=0)]),
            np.concatenate([sizes, np.repeat(sizes[:1], fill, axis=0)]))
