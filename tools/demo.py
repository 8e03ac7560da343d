#!/usr/bin/env python3
"""Run the toolkit on the bundled sample: no download needed.

    python tools/demo.py [--output-dir output/demo]

Materializes the sample checkpoint (CenterMask-Lite V-19-slim-dw, random calibrated weights
from tests/data/golden_lite_V_19_slim_dw) as a detectron2 .pth, runs the PyTorch model over
the sample images with tester.py, scores the results against the sample annotations and
compares them with upstream centermask2's results for the same checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("demo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="output/demo", help="where everything is written (default output/demo)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import tester
    from centermask2.sample import SAMPLE_DIR, write_checkpoint

    out = Path(args.output_dir)
    case = json.loads((SAMPLE_DIR / "case.json").read_text())
    ckpt = write_checkpoint(SAMPLE_DIR, out / "sample_model.pth")
    logger.info("Sample checkpoint: %s", ckpt)
    rc = tester.main([
        "--backend", "torch",
        "--config-file", str(ROOT / "configs" / "centermask" / case["config"]),
        "--images", str(SAMPLE_DIR / "images"),
        "--coco-json", str(SAMPLE_DIR / "annotations_gt.json"),
        "--output-dir", str(out / "torch"),
        "MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", "cpu",
    ])
    if rc:
        return rc
    expected = json.loads((SAMPLE_DIR / "metrics_gt.json").read_text())
    got = json.loads((out / "torch" / "metrics.json").read_text())
    logger.info("AP vs upstream centermask2 on the same checkpoint and images:")
    worst = 0.0
    for task in ("bbox", "segm"):
        diff = abs(got[task]["AP"] - expected[task]["AP"])
        worst = max(worst, diff)
        logger.info("  %-4s AP ours %.3f  upstream %.3f  |diff| %.3f", task, got[task]["AP"], expected[task]["AP"], diff)
    logger.info("Outputs: %s", ", ".join(str(out / "torch" / f) for f in ("coco_instances_results.json", "metrics.json")))
    return 0 if worst <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
