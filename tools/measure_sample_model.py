#!/usr/bin/env python3
"""Measure the sample model on the held-out shapes through every path; write its metrics.json.

    python tools/measure_sample_model.py --data datasets/shapes \\
        [--stage output/sample_shapes --stage output/sample_shapes_stage2] \\
        [--int8 percentile:64 --int8 minmax:64 ...] [--work-dir output/measure] \\
        [--output tools/sample_model/metrics.json]

Paths, each scored by the toolkit's evaluator on the held-out split (``--data``/val): PyTorch with
the shipped (float16-stored) weights (and, with ``--stage``, the last stage's float32
``model_final.pth``); ONNX Runtime and OpenVINO (fp32, and bf16 where this CPU has it) on a dynamic
export; the ``.bin`` pipeline on a static 384x384 uint8 export; for each ``--int8 METHOD:COUNT``, the
int8 model of ``tools/quantize.py`` (dynamic export, the first COUNT training images) in ONNX Runtime
and OpenVINO (its float32 layers in fp32, and in bf16 where the CPU has it). The training figures
come from each stage's ``metrics.jsonl`` and ``metrics_iter*.json``; without ``--stage`` the
previous report's training figures (and float32-weights figure) are kept. Lower-precision figures
depend on the CPU's instructions (int8 rounds differently without VNNI), so the report names the
CPU. A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "sample" / "shapes_lite_V_19_slim_dw.yaml"
SHIPPED = ROOT / "tools" / "sample_model" / "model_final.pth"


def _ap(folder: Path) -> dict[str, float]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"bbox_AP": round(metrics["bbox"]["AP"], 3), "segm_AP": round(metrics["segm"]["AP"], 3)}


def _stage(folder: Path, previous: dict) -> dict:
    """One training stage's figures; step times from its metrics.jsonl, or (older runs, which
    did not record them) from the previous report's entry for the same folder."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {}
    for path in sorted(folder.glob("metrics_iter*.json")):
        m = json.loads(path.read_text())
        evals[str(int(re.findall(r"\d+", path.stem)[0]))] = {"bbox": round(m["bbox"]["AP"], 2), "segm": round(m["segm"]["AP"], 2)}
    final = folder / f"eval_iter{rows[-1]['iteration']:07d}" / "metrics.json"
    if final.is_file():
        m = json.loads(final.read_text())
        evals[str(rows[-1]["iteration"])] = {"bbox": round(m["bbox"]["AP"], 2), "segm": round(m["segm"]["AP"], 2)}
    seconds = sum(r.get("seconds", 0.0) for r in rows)
    if not any("seconds" in r for r in rows):
        old = [s for s in previous.get("training", {}).get("stages", []) if s.get("output_dir") == str(folder)]
        seconds = old[0]["step_seconds"] if old else previous.get("training", {}).get("seconds", 0.0)
    losses = {k: round(v, 4) for k, v in rows[-1].items() if k.startswith("loss_")}
    config = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
    batch = re.search(r"IMS_PER_BATCH: (\d+)", config)
    return {
        "output_dir": str(folder),
        "iterations": rows[-1]["iteration"],
        "ims_per_batch": int(batch.group(1)) if batch else None,
        "step_seconds": round(seconds),
        "seconds_per_iteration": round(seconds / max(len(rows), 1), 2),
        "final_losses": losses,
        "eval_during_training": evals,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="datasets/shapes", help="make_shapes_dataset.py output (train/ and val/)")
    p.add_argument("--stage", action="append", default=[], help="a training output folder, in order")
    p.add_argument("--int8", action="append", default=None, metavar="METHOD:COUNT",
                   help="an int8 model to measure: calibration method and number of training images "
                   "(repeatable; default percentile:64, what tools/quantize.py does by default)")
    p.add_argument("--work-dir", default="output/measure")
    p.add_argument("--output", default=str(ROOT / "tools" / "sample_model" / "metrics.json"))
    p.add_argument("--dataset-seed", type=int, default=0, help="the seed --data was made with (default 0)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from centermask2.cli import export_onnx, postprocess, preprocess, tester
    from centermask2.cli import quantize as quantize_cli
    from centermask2.cpu import cpu_description
    from centermask2.engine.sources import open_model

    data, work = Path(args.data), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    images, ann = data / "val" / "images", data / "val" / "annotations.json"
    common = ["--images", str(images), "--coco-json", str(ann), "--no-progress", "--threads", str(args.threads)]
    previous = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else {}
    paths: dict[str, dict[str, float]] = {}

    def run(label: str, folder: str, argv: list[str], overrides: tuple[str, ...] = ()) -> None:
        if tester.main([*argv, *common, "--output-dir", str(work / folder), *overrides]) != 0:
            raise SystemExit(f"{label}: tester.py failed")
        paths[label] = _ap(work / folder)
        print(f"{label:72s} bbox AP {paths[label]['bbox_AP']:6.2f}  segm AP {paths[label]['segm_AP']:6.2f}", flush=True)

    float32_label = "PyTorch, float32 weights (before --half)"
    run("PyTorch", "torch", ["--backend", "torch", "--config-file", str(CONFIG)], ("MODEL.WEIGHTS", str(SHIPPED)))
    if args.stage:
        run(float32_label, "torch_fp32", ["--backend", "torch", "--config-file", str(CONFIG)],
            ("MODEL.WEIGHTS", str(Path(args.stage[-1]) / "model_final.pth")))
    elif float32_label in previous.get("paths", {}):
        paths[float32_label] = previous["paths"][float32_label]
    dynamic, static = work / "dynamic.onnx", work / "static.onnx"
    for out, extra in ((dynamic, ["--dynamic"]), (static, ["--input-size", "384x384"])):
        if export_onnx.main(["--config-file", str(CONFIG), "--output", str(out), *extra, "--coco-json", str(ann),
                             "MODEL.WEIGHTS", str(SHIPPED)]) != 0:
            raise SystemExit(f"export of {out} failed")
    run("ONNX Runtime, dynamic export", "onnx", ["--backend", "onnx", "--model", str(dynamic)])
    run("OpenVINO fp32, dynamic export", "openvino", ["--backend", "openvino", "--model", str(dynamic)])
    has_bf16 = open_model(dynamic, "openvino", precision="bf16", cache_dir="").backend.precision_used == "bf16"
    if has_bf16:
        run("OpenVINO bf16, dynamic export", "openvino_bf16",
            ["--backend", "openvino", "--precision", "bf16", "--model", str(dynamic)])
    else:
        print("OpenVINO bf16: this CPU has no bf16 (AVX-512 BF16 / AMX); OpenVINO would run fp32, not measured")
    bins = work / "bins"
    if preprocess.main(["--model", str(static), "--images", str(images), "--coco-json", str(ann), "--output", str(bins),
                        "--no-progress"]) != 0 or tester.main(
            ["--model", str(static), "--bins", str(bins), "--output", str(work / "raw"), "--no-progress"]) != 0 or \
            postprocess.main(["--outputs", str(work / "raw"), "--info", str(bins / "bin_info.json"), "--model",
                              str(static), "--coco-json", str(ann), "--output-dir", str(work / "bin"), "--no-progress"]) != 0:
        raise SystemExit(".bin pipeline failed")
    paths[".bin pipeline, static 384x384 uint8 (ONNX Runtime)"] = _ap(work / "bin")
    print(".bin pipeline", paths[".bin pipeline, static 384x384 uint8 (ONNX Runtime)"], flush=True)
    for variant in args.int8 or ["percentile:64"]:
        method, _, count = variant.partition(":")
        int8 = work / f"dynamic_int8_{method}_{count}.onnx"
        if quantize_cli.main(["--model", str(dynamic), "--calibration", str(data / "train" / "images"), "--count", count,
                              "--method", method, "--output", str(int8), "--no-progress"]) != 0:
            raise SystemExit(f"quantization {variant} failed")
        name = f"int8 {method}, {count} images"
        run(f"{name}: ONNX Runtime", f"onnx_int8_{method}_{count}", ["--backend", "onnx", "--model", str(int8)])
        run(f"{name}: OpenVINO, float32 layers fp32", f"openvino_int8_{method}_{count}",
            ["--backend", "openvino", "--model", str(int8)])
        if has_bf16:
            run(f"{name}: OpenVINO, float32 layers bf16", f"openvino_int8_bf16_{method}_{count}",
                ["--backend", "openvino", "--precision", "bf16", "--model", str(int8)])

    val = json.loads(ann.read_text())
    torch_metrics = json.loads((work / "torch" / "metrics.json").read_text())
    import torch

    if args.stage:
        stages = [_stage(Path(s), previous) for s in args.stage]
        training = {
            "stages": stages,
            "iterations": sum(s["iterations"] for s in stages),
            "step_seconds": sum(s["step_seconds"] for s in stages),
            "machine": f"{cpu_description()}, torch {torch.__version__} CPU, 2 threads",
        }
    else:
        training = previous.get("training", {})

    report = {
        "images": len(val["images"]),
        "dataset_seed": args.dataset_seed,
        "split": "val",
        "bbox": {k: round(v, 3) for k, v in torch_metrics["bbox"].items()},
        "segm": {k: round(v, 3) for k, v in torch_metrics["segm"].items()},
        "segm_per_category": {k: round(v, 2) for k, v in torch_metrics.get("segm_per_category", {}).items()},
        "paths": paths,
        "paths_measured_on": f"{cpu_description()}, torch {torch.__version__}, {args.threads} threads",
        "training": training,
    }
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
