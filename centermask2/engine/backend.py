"""What every backend is: ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``.

Inputs are :data:`centermask2.contract.INPUT_NAMES`: ``images`` np.ndarray[B, 3, H, W] (raw
pixels in the model's input dtype, padded bottom/right) and ``image_sizes`` np.ndarray[B, 2]
int64; outputs are :data:`centermask2.contract.OUTPUT_NAMES`. PyTorch
(:mod:`.torch_backend`) and ONNX Runtime (:mod:`.onnxruntime_backend`) look alike to the stages.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Backend"]


class Backend(Protocol):
    """Anything that runs the network: ``run({"images", "image_sizes"}) -> outputs by name``.

    Attributes:
        input_dtype: dtype of the ``images`` input (``"uint8"`` or ``"float32"``).
    """

    input_dtype: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
