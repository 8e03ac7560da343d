"""What this machine's CPU is and which lower-precision instructions it has.

Benchmarks name the CPU with every figure, and bf16/int8 checks ask whether the hardware has
the instructions they need. Linux only reads ``/proc/cpuinfo``; elsewhere the flags are empty
and the description falls back to :func:`platform.processor`.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["PRECISION_FLAGS", "cpu_flags", "cpu_description"]

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
