#!/usr/bin/env python3
"""The whole toolkit on the bundled sample, no download needed.

    python tools/demo.py [--output-dir output/demo] [--quick]

Sample: CenterMask-Lite V-19-slim-dw with random, calibrated weights and two images
(``tools/sample``, see its README), for which upstream centermask2's metrics are stored.
Steps:

1. materialize the checkpoint as a detectron2 ``.pth``;
2. PyTorch: ``tester.py --backend torch`` (scores against the sample annotations), with upstream's
   default padding and padded to 1344x1344;
3. export a static 1344x1344 uint8 ONNX model (``convert_model_into_onnx.py``);
4. ``preprocess_inputs_to_bin.py`` -> ``tester.py --bins`` (ONNX Runtime) ->
   ``postprocess_bin_outputs.py`` (COCO results and metrics);
5. ``visualizer.py``: pictures of the offline pipeline's results, and PyTorch vs ONNX Runtime
   (both on 1344x1344 input) side by side;
6. compare every AP with upstream's for the same checkpoint and images.

``--quick`` skips steps 3-4 (no export).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the bundled sample: checkpoint recipe, images, annotations and upstream's metrics
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

logger = logging.getLogger("demo")


def _step(title: str) -> None:
    logger.info("\n=== %s ===", title)


def _run(name: str, main, argv: list[str]) -> None:
    t0 = time.perf_counter()
    rc = main(argv)
    if rc != 0:
        raise SystemExit(f"{name} failed with exit code {rc}")
    logger.info("(%s took %.1f s)", name, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run every stage of the toolkit on the bundled sample.")
    p.add_argument("--output-dir", default="output/demo", help="where everything is written (default output/demo)")
    p.add_argument("--quick", action="store_true", help="PyTorch only: skip the ONNX export and the .bin pipeline")
    args = p.parse_args(argv)
    from centermask2.cli.common import setup_logging

    setup_logging()

    from centermask2.checkpoint import write_checkpoint
    from centermask2.cli import export_onnx as convert_model_into_onnx
    from centermask2.cli import postprocess as postprocess_bin_outputs
    from centermask2.cli import preprocess as preprocess_inputs_to_bin
    from centermask2.cli import tester, visualizer

    out = Path(args.output_dir).resolve()
    case = json.loads((SAMPLE_DIR / "case.json").read_text())
    config = str(ROOT / "configs" / "centermask" / case["config"])
    images = str(SAMPLE_DIR / "images")
    start = time.perf_counter()

    _step("1. Sample checkpoint")
    ckpt = write_checkpoint(SAMPLE_DIR, out / "sample_model.pth")
    logger.info("%s (%s)", ckpt, case["config"])

    _step("2. PyTorch model (tester.py --backend torch)")
    _run("tester.py", tester.main, [
        "--backend", "torch", "--config-file", config, "--images", images,
        "--coco-json", str(SAMPLE_DIR / "annotations_gt.json"), "--output-dir", str(out / "torch"),
        "MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", "cpu",
    ])
    checks = [("PyTorch", out / "torch" / "metrics.json", SAMPLE_DIR / "metrics_gt.json")]
    outputs = {
        "checkpoint": ckpt,
        "PyTorch results": out / "torch" / "coco_instances_results.json",
        "PyTorch metrics": out / "torch" / "metrics.json",
    }

    if not args.quick:
        _step("2b. PyTorch model padded to 1344x1344, as the static ONNX model sees its input (padding ignored)")
        _run("tester.py --pad-to", tester.main, [
            "--backend", "torch", "--config-file", config, "--images", images, "--pad-to", "1344x1344",
            "--coco-json", str(SAMPLE_DIR / "annotations_gt.json"), "--output-dir", str(out / "torch_1344"),
            "MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", "cpu",
        ])
        checks.append(("PyTorch, padded to 1344", out / "torch_1344" / "metrics.json", SAMPLE_DIR / "metrics_gt.json"))
        onnx_path = out / "sample_1344x1344_uint8.onnx"
        _step("3. Export a static ONNX model (convert_model_into_onnx.py)")
        _run("convert_model_into_onnx.py", convert_model_into_onnx.main, [
            "--config-file", config, "--output", str(onnx_path), "--input-size", "1344x1344",
            "--input-dtype", "uint8", "MODEL.WEIGHTS", str(ckpt),
        ])
        _step("4a. Images to .bin (preprocess_inputs_to_bin.py)")
        gt = str(SAMPLE_DIR / "annotations_gt.json")
        _run("preprocess_inputs_to_bin.py", preprocess_inputs_to_bin.main, [
            "--model", str(onnx_path), "--images", images, "--coco-json", gt, "--output", str(out / "bins"),
        ])
        _step("4b. .bin through ONNX Runtime (tester.py --bins)")
        _run("tester.py --bins", tester.main, [
            "--model", str(onnx_path), "--bins", str(out / "bins"), "--output", str(out / "raw"),
        ])
        _step("4c. Output .bin to COCO results and metrics (postprocess_bin_outputs.py)")
        _run("postprocess_bin_outputs.py", postprocess_bin_outputs.main, [
            "--outputs", str(out / "raw"), "--info", str(out / "bins" / "bin_info.json"), "--model", str(onnx_path),
            "--coco-json", gt, "--output-dir", str(out / "offline"),
        ])
        checks.append(("ONNX Runtime, .bin pipeline", out / "offline" / "metrics.json", SAMPLE_DIR / "metrics_gt.json"))
        outputs.update({
            "ONNX model": onnx_path,
            "input bins": out / "bins",
            "output bins": out / "raw",
            "offline results": out / "offline" / "coco_instances_results.json",
            "offline metrics": out / "offline" / "metrics.json",
        })

    _step("5. Pictures (visualizer.py)")
    results = out / ("offline" if not args.quick else "torch") / "coco_instances_results.json"
    _run("visualizer.py", visualizer.main, [
        "--results", str(results), "--images", images, "--output-dir", str(out / "pictures"),
        "--score-threshold", "0.5", "--no-progress",
    ])
    if not args.quick:
        _run("visualizer.py --compare", visualizer.main, [
            "--results", str(out / "torch_1344" / "coco_instances_results.json"), "--compare", str(results),
            "--images", images, "--output-dir", str(out / "pictures_torch_vs_onnx"), "--score-threshold", "0.5",
            "--no-progress",
        ])
        outputs["side-by-side pictures"] = out / "pictures_torch_vs_onnx"
    outputs["pictures"] = out / "pictures"

    _step("6. AP against upstream centermask2 (same checkpoint and images)")
    worst = 0.0
    for label, got_path, want_path in checks:
        got, want = json.loads(got_path.read_text()), json.loads(want_path.read_text())
        for task in ("bbox", "segm"):
            diff = abs(got[task]["AP"] - want[task]["AP"])
            worst = max(worst, diff)
            logger.info("%-28s %-4s AP: ours %6.2f  upstream %6.2f  |diff| %.3f", label, task, got[task]["AP"],
                        want[task]["AP"], diff)
    _step("Outputs")
    for what, path in outputs.items():
        logger.info("%-22s %s", what, path)
    logger.info("\nDone in %.0f s. %s", time.perf_counter() - start,
                "All AP within 0.1 of upstream." if worst <= 0.1 else "AP differs from upstream by more than 0.1!")
    return 0 if worst <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
