"""What every backend is: ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``.

Inputs are :data:`centermask2.contract.INPUT_NAMES`: ``images`` np.ndarray[B, 3, H, W] (raw
pixels in the model's input dtype, padded bottom/right) and ``image_sizes`` np.ndarray[B, 2]
int64; outputs are :data:`centermask2.contract.OUTPUT_NAMES`. PyTorch
(:mod:`.torch_backend`), ONNX Runtime (:mod:`.onnxruntime_backend`) and OpenVINO
(:mod:`.openvino_backend`) look alike to the stages.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["Backend", "fill_static_batch", "cpu_flags", "cpu_description"]

#: the instruction sets lower-precision speed and accuracy depend on (bf16: AVX-512 BF16 or AMX;
#: int8 without rounding loss: VNNI or AMX)
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags as Linux names them (empty where ``/proc/cpuinfo`` is absent)."""
    return set(next((line.split(":", 1)[1].split() for line in _cpuinfo().splitlines()
                     if line.startswith("flags")), []))


def cpu_description() -> str:
    """The CPU's model name and which of :data:`PRECISION_FLAGS` it has, for benchmark reports."""
    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    flags = cpu_flags()
    return f"{name} [{' '.join(f for f in PRECISION_FLAGS if f in flags)}]"


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
