#!/usr/bin/env python3
"""Keep only the weights of a training checkpoint, for deployment or sharing.

    python tools/strip_checkpoint.py output/mine/model_final.pth mine.pth [--half]

A checkpoint of tools/train_net.py also holds the optimizer's momentum (as large as the
weights) and the iteration; the stripped file holds ``{"model": weights}`` plus the iteration
and seed it came from, in the form every stage script reads (MODEL.WEIGHTS). ``--half`` stores
floating-point tensors in float16, halving the file; they are cast back to float32 on loading,
so compute stays in float32 and only the weights are rounded (evaluate the stripped file to
see what that costs: for the sample model it is below 0.1 AP). Written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def strip(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False) -> Path:
    """Write the weights of ``src`` to ``dst``; returns ``dst``."""
    import torch

    from centermask2.checkpoint.loader import load_state_dict_file

    state = load_state_dict_file(os.fspath(src))
    meta = torch.load(src, map_location="cpu", weights_only=True)
    weights = {}
    for key, value in state.items():
        value = torch.as_tensor(value).contiguous()
        weights[key] = value.half() if half and value.is_floating_point() else value
    out = {"model": weights}
    for key in ("iteration", "seed"):
        if isinstance(meta, dict) and key in meta:
            out[key] = meta[key]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    torch.save(out, tmp)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint of tools/train_net.py (or any detectron2 .pth)")
    p.add_argument("output", help="the weights-only .pth to write")
    p.add_argument("--half", action="store_true", help="store floating-point tensors in float16")
    args = p.parse_args(argv)
    from centermask2.cli.common import report_error
    from centermask2.errors import CenterMask2Error

    try:
        out = strip(args.checkpoint, args.output, args.half)
    except (CenterMask2Error, OSError) as exc:
        return report_error(exc, 2)
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
