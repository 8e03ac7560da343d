#!/usr/bin/env python3
"""The whole toolkit on the bundled sample model, no download needed.

    python tools/demo.py [--output-dir output/demo] [--quick]

Sample model: CenterMask-Lite V-19-slim-dw trained with ``tools/train_net.py`` on the generated
shapes dataset (``tools/sample_model``, see its README). Steps:

1. generate the held-out shapes images (``tools/make_shapes_dataset.py``; never seen in training);
2. PyTorch: ``tester.py --backend torch`` (scores against their annotations);
3. export a static 384x384 uint8 ONNX model (``convert_model_into_onnx.py``);
4. ``preprocess_inputs_to_bin.py`` -> ``tester.py --bins`` (ONNX Runtime) ->
   ``postprocess_bin_outputs.py`` (COCO results and metrics);
5. ``visualizer.py``: pictures of the offline pipeline's results, and PyTorch vs ONNX Runtime
   side by side;
6. compare: the offline pipeline's AP with PyTorch's, both with the figures the model shipped with.

``--quick`` skips steps 3-4 (no export). The console gets one line per step and the summary (AP
table, where every output went); each step's own output (log lines, metric tables, the per-image
comparison lines) is in ``<output-dir>/logs/<NN>_<step>.log``, named on its line. The
random-weight upstream parity checks live in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package, also from a checkout that is not installed
#: the sample model: weights, the held-out figures it shipped with, its README
MODEL_DIR = Path(__file__).resolve().parent / "sample_model"
CONFIG = ROOT / "configs" / "sample" / "shapes_lite_V_19_slim_dw.yaml"
#: the static input of the exported model: the largest resized held-out image fits
INPUT_SIZE = "384x384"

logger = logging.getLogger("demo")


class _Steps:
    """Runs the stages, each with everything it prints (log lines, metric tables, per-image
    lines) in its own log file under ``logs/``; the console gets one line per stage, the
    demo's summary, and any warning or error."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def run(self, title: str, main: Callable[[list[str]], int] | Callable[[], object], argv: list[str] | None = None) -> Path:
        """Run ``main(argv)`` (``main()`` when ``argv`` is None); returns its log file."""
        self.count += 1
        log = self.logs / f"{self.count:02d}_{re.sub(r'[^a-z0-9]+', '_', title.split(' (')[0].lower()).strip('_')}.log"
        root = logging.getLogger()
        t0 = time.perf_counter()
        with open(log, "w") as f:
            handler = logging.StreamHandler(f)
            handler.setFormatter(logging.Formatter("%(message)s"))
            root.addHandler(handler)
            try:
                with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    rc = main() if argv is None else main(argv)
            finally:
                root.removeHandler(handler)
        seconds = time.perf_counter() - t0
        if argv is not None and rc != 0:
            raise SystemExit(f"{title} failed with exit code {rc}; its output: {log}")
        logger.info("%-64s %6.1f s   %s", title, seconds, log.relative_to(self.out))
        return log


def _console_only_demo_and_warnings(record: logging.LogRecord) -> bool:
    return record.name == "demo" or record.levelno >= logging.WARNING


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every stage of the toolkit on the bundled sample model.")
    p.add_argument("--output-dir", default="output/demo", help="where everything is written (default output/demo)")
    p.add_argument("--quick", action="store_true", help="PyTorch only: skip the ONNX export and the .bin pipeline")
    args = p.parse_args(argv)
    from centermask2.cli.common import setup_logging

    setup_logging()
    for handler in logging.getLogger().handlers:  # the console: the stages' own lines go to their logs
        handler.addFilter(_console_only_demo_and_warnings)

    from centermask2.cli import export_onnx as convert_model_into_onnx
    from centermask2.cli import postprocess as postprocess_bin_outputs
    from centermask2.cli import preprocess as preprocess_inputs_to_bin
    from centermask2.cli import tester, visualizer
    from centermask2.data.shapes import make_split

    out = Path(args.output_dir).resolve()
    shipped = json.loads((MODEL_DIR / "metrics.json").read_text())
    weights = str(MODEL_DIR / "model_final.pth")
    config = str(CONFIG)
    start = time.perf_counter()
    steps = _Steps(out)
    logger.info("CenterMask2 demo: the bundled sample model (tools/sample_model) on %d held-out images.",
                int(shipped["images"]))
    logger.info("Everything goes to %s; each step's full output is in the log named after it.\n", out)

    split: list[Path] = []

    def held_out() -> None:
        split.append(make_split(out / "shapes", "val", int(shipped["images"]), int(shipped["dataset_seed"]),
                                progress=False))
        logging.getLogger("make_shapes_dataset").info("%d images and their annotations: %s", int(shipped["images"]),
                                                      split[0])

    steps.run("held-out images (tools/make_shapes_dataset.py)", held_out)
    gt = str(split[0])
    images = str(out / "shapes" / "val" / "images")

    steps.run("PyTorch (tester.py --backend torch)", tester.main, [
        "--backend", "torch", "--config-file", config, "--images", images, "--coco-json", gt,
        "--output-dir", str(out / "torch"), "--no-progress", "MODEL.WEIGHTS", weights,
    ])
    checks = [("PyTorch", out / "torch" / "metrics.json")]
    outputs = {
        "held-out images": images,
        "PyTorch results": out / "torch" / "coco_instances_results.json",
        "PyTorch metrics": out / "torch" / "metrics.json",
    }

    if not args.quick:
        onnx_path = out / f"sample_{INPUT_SIZE}_uint8.onnx"
        steps.run(f"static {INPUT_SIZE} ONNX export (convert_model_into_onnx.py)", convert_model_into_onnx.main, [
            "--config-file", config, "--output", str(onnx_path), "--input-size", INPUT_SIZE,
            "--input-dtype", "uint8", "--coco-json", gt, "MODEL.WEIGHTS", weights,
        ])
        steps.run("images to .bin (preprocess_inputs_to_bin.py)", preprocess_inputs_to_bin.main, [
            "--model", str(onnx_path), "--images", images, "--coco-json", gt, "--output", str(out / "bins"),
            "--no-progress",
        ])
        steps.run(".bin through ONNX Runtime (tester.py --bins)", tester.main, [
            "--model", str(onnx_path), "--bins", str(out / "bins"), "--output", str(out / "raw"), "--no-progress",
        ])
        steps.run(".bin to COCO results and metrics (postprocess_bin_outputs.py)", postprocess_bin_outputs.main, [
            "--outputs", str(out / "raw"), "--info", str(out / "bins" / "bin_info.json"), "--model", str(onnx_path),
            "--coco-json", gt, "--output-dir", str(out / "offline"), "--no-progress",
        ])
        checks.append(("ONNX Runtime, .bin pipeline", out / "offline" / "metrics.json"))
        outputs.update({
            "ONNX model": onnx_path,
            "input bins": out / "bins",
            "output bins": out / "raw",
            "offline results": out / "offline" / "coco_instances_results.json",
            "offline metrics": out / "offline" / "metrics.json",
        })

    results = out / ("offline" if not args.quick else "torch") / "coco_instances_results.json"
    steps.run("pictures (visualizer.py)", visualizer.main, [
        "--results", str(results), "--images", images, "--coco-json", gt, "--output-dir", str(out / "pictures"),
        "--score-threshold", "0.5", "--no-progress",
    ])
    outputs["pictures"] = out / "pictures"
    if not args.quick:
        log = steps.run("PyTorch vs ONNX Runtime side by side (visualizer.py --compare)", visualizer.main, [
            "--results", str(out / "torch" / "coco_instances_results.json"), "--compare", str(results),
            "--images", images, "--coco-json", gt, "--output-dir", str(out / "pictures_torch_vs_onnx"),
            "--score-threshold", "0.5", "--no-progress",
        ])
        total = [line for line in log.read_text().splitlines() if line.startswith("Comparison over all images")]
        if total:
            logger.info("    %s (per image: %s)", total[-1], log.relative_to(out))
        outputs["side-by-side pictures"] = out / "pictures_torch_vs_onnx"

    logger.info("\nAP on the held-out images (the model shipped with bbox %.2f, segm %.2f):",
                shipped["bbox"]["AP"], shipped["segm"]["AP"])
    worst = 0.0
    for label, got_path in checks:
        got = json.loads(got_path.read_text())
        diffs = [abs(got[task]["AP"] - shipped[task]["AP"]) for task in ("bbox", "segm")]
        worst = max(worst, *diffs)
        logger.info("  %-28s bbox %6.2f  segm %6.2f  (|diff| %.3f, %.3f)", label, got["bbox"]["AP"],
                    got["segm"]["AP"], *diffs)
    logger.info("\nOutputs (under %s):", out)
    for what, path in outputs.items():
        logger.info("  %-22s %s", what, Path(path).relative_to(out))
    logger.info("  %-22s %s", "logs of every step", steps.logs.relative_to(out))
    logger.info("\nDone in %.0f s. %s", time.perf_counter() - start,
                "Every path within 0.1 AP of the shipped figures." if worst <= 0.1
                else "AP differs from the shipped figures by more than 0.1!")
    return 0 if worst <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
