#!/usr/bin/env python3
"""What an ONNX export costs, with and without the exporter's decomposition re-trace.

    python tools/benchmark_export.py [--configs centermask_V_39_eSE_FPN_ms_3x.yaml ...] \\
        [--static] [--runs 2] [--warmup 0] [--threads 1]

Each config's model (random weights: the export's cost does not depend on them) is exported in
this one process, interleaved: the exporter's own path (capture, then the decomposition re-trace),
then ours (capture, the graph lowered in place, no re-trace: ``centermask2/export/lowering.py``),
then the exporter's again, and so on; medians are printed, and whether the two files hold the
same graph (same operators in the same order). Dynamic exports by default (what the smoke test
and ``--dynamic`` make), ``--padding include``. It is a script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path

DEFAULT_CONFIGS = ("centermask_V_39_eSE_FPN_ms_3x.yaml", "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml")


def _export(model, cfg, settings, file: Path, *, lowered: bool) -> None:
    from centermask2.export import export_onnx, lowering

    hook = lowering.decompose_only_where_needed
    # export_onnx looks the hook up when it runs: swapped for a no-op, the exporter's own path
    lowering.decompose_only_where_needed = hook if lowered else contextlib.nullcontext
    try:
        classes = cfg.MODEL.FCOS.NUM_CLASSES
        export_onnx(model, cfg, file, settings, class_names=[f"c{i}" for i in range(classes)],
                    category_ids=list(range(1, classes + 1)))
    finally:
        lowering.decompose_only_where_needed = hook


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="config files, by name in configs/centermask/ or by path (default: V-39, Lite V-19-slim-dw)")
    p.add_argument("--static", action="store_true", help="static 1x3x800x1216 exports instead of dynamic ones")
    add_timing_arguments(p, runs=2, warmup=0, threads=1)
    args = p.parse_args(argv)

    import onnx
    import torch

    from centermask2.benchmark import format_table, header, measure, set_threads, summarize
    from centermask2.config import load_config
    from centermask2.export import ExportSettings, default_opset
    from centermask2.modeling import build_model

    set_threads(args.threads)
    print(header(threads=args.threads, runs=args.runs, warmup=args.warmup,
                 input_shape="1x3x800x1216 (static)" if args.static else "dynamic (sample 1x3x256x320)"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            path = Path(name) if Path(name).is_file() else ROOT / "configs" / "centermask" / name
            cfg = load_config(path, ["MODEL.DEVICE", "cpu"])
            torch.manual_seed(0)
            model = build_model(cfg).eval()
            settings = ExportSettings(input_size=(800, 1216) if args.static else (256, 320), dynamic=not args.static,
                                      padding="include", opset=default_opset(model))
            files = {"exporter": Path(tmp) / "exporter.onnx", "lowered": Path(tmp) / "lowered.onnx"}
            calls = {kind: functools.partial(_export, model, cfg, settings, file, lowered=kind == "lowered")
                     for kind, file in files.items()}
            stats = summarize(measure(calls, runs=args.runs, warmup=args.warmup))
            ops = {kind: [n.op_type for n in onnx.load(str(f)).graph.node] for kind, f in files.items()}
            same = "same" if ops["exporter"] == ops["lowered"] else f"{len(ops['exporter'])} vs {len(ops['lowered'])} nodes"
            rows.append([path.stem, f"{stats['exporter'].median:.1f}", f"{stats['lowered'].median:.1f}",
                         f"{stats['lowered'].median / stats['exporter'].median:.2f}", same])
            print(format_table(["config", "exporter s", "lowered s", "ratio", "graph"], rows[-1:]), flush=True)
    print()
    print(format_table(["config", "exporter s", "lowered s", "ratio", "graph"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
