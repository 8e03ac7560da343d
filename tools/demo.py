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

``--quick`` skips steps 3-4 (no export). The random-weight upstream parity checks live in the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the sample model: weights, the held-out figures it shipped with, its README
MODEL_DIR = Path(__file__).resolve().parent / "sample_model"
CONFIG = ROOT / "configs" / "sample" / "shapes_lite_V_19_slim_dw.yaml"
#: the static input of the exported model: the largest resized held-out image fits
INPUT_SIZE = "384x384"

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
    p = argparse.ArgumentParser(description="Run every stage of the toolkit on the bundled sample model.")
    p.add_argument("--output-dir", default="output/demo", help="where everything is written (default output/demo)")
    p.add_argument("--quick", action="store_true", help="PyTorch only: skip the ONNX export and the .bin pipeline")
    args = p.parse_args(argv)
    from centermask2.cli.common import setup_logging

    setup_logging()

    from make_shapes_dataset import make_split

    from centermask2.cli import export_onnx as convert_model_into_onnx
    from centermask2.cli import postprocess as postprocess_bin_outputs
    from centermask2.cli import preprocess as preprocess_inputs_to_bin
    from centermask2.cli import tester, visualizer

    out = Path(args.output_dir).resolve()
    shipped = json.loads((MODEL_DIR / "metrics.json").read_text())
    weights = str(MODEL_DIR / "model_final.pth")
    config = str(CONFIG)
    start = time.perf_counter()

    _step("1. Held-out images (tools/make_shapes_dataset.py, not seen in training)")
    gt = str(make_split(out / "shapes", "val", int(shipped["images"]), int(shipped["dataset_seed"]), progress=False))
    images = str(out / "shapes" / "val" / "images")

    _step("2. PyTorch model (tester.py --backend torch)")
    _run("tester.py", tester.main, [
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
        _step(f"3. Export a static {INPUT_SIZE} ONNX model (convert_model_into_onnx.py)")
        _run("convert_model_into_onnx.py", convert_model_into_onnx.main, [
            "--config-file", config, "--output", str(onnx_path), "--input-size", INPUT_SIZE,
            "--input-dtype", "uint8", "--coco-json", gt, "MODEL.WEIGHTS", weights,
        ])
        _step("4a. Images to .bin (preprocess_inputs_to_bin.py)")
        _run("preprocess_inputs_to_bin.py", preprocess_inputs_to_bin.main, [
            "--model", str(onnx_path), "--images", images, "--coco-json", gt, "--output", str(out / "bins"),
        ])
        _step("4b. .bin through ONNX Runtime (tester.py --bins)")
        _run("tester.py --bins", tester.main, [
            "--model", str(onnx_path), "--bins", str(out / "bins"), "--output", str(out / "raw"), "--no-progress",
        ])
        _step("4c. Output .bin to COCO results and metrics (postprocess_bin_outputs.py)")
        _run("postprocess_bin_outputs.py", postprocess_bin_outputs.main, [
            "--outputs", str(out / "raw"), "--info", str(out / "bins" / "bin_info.json"), "--model", str(onnx_path),
            "--coco-json", gt, "--output-dir", str(out / "offline"),
        ])
        checks.append(("ONNX Runtime, .bin pipeline", out / "offline" / "metrics.json"))
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
        "--results", str(results), "--images", images, "--coco-json", gt, "--output-dir", str(out / "pictures"),
        "--score-threshold", "0.5", "--no-progress",
    ])
    if not args.quick:
        _run("visualizer.py --compare", visualizer.main, [
            "--results", str(out / "torch" / "coco_instances_results.json"), "--compare", str(results),
            "--images", images, "--coco-json", gt, "--output-dir", str(out / "pictures_torch_vs_onnx"),
            "--score-threshold", "0.5",
            "--no-progress",
        ])
        outputs["side-by-side pictures"] = out / "pictures_torch_vs_onnx"
    outputs["pictures"] = out / "pictures"

    _step("6. AP on the held-out images, against the figures the model shipped with")
    worst = 0.0
    for label, got_path in checks:
        got = json.loads(got_path.read_text())
        for task in ("bbox", "segm"):
            diff = abs(got[task]["AP"] - shipped[task]["AP"])
            worst = max(worst, diff)
            logger.info("%-28s %-4s AP %6.2f  (shipped %6.2f, |diff| %.3f)", label, task, got[task]["AP"],
                        shipped[task]["AP"], diff)
    _step("Outputs")
    for what, path in outputs.items():
        logger.info("%-22s %s", what, path)
    logger.info("\nDone in %.0f s. %s", time.perf_counter() - start,
                "Every path within 0.1 AP of the shipped figures." if worst <= 0.1
                else "AP differs from the shipped figures by more than 0.1!")
    return 0 if worst <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
