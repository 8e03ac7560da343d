#!/usr/bin/env python3
"""Throughput of stage 3 of the offline pipeline: raw output bins -> COCO results -> metrics.

    python tools/benchmark_postprocess.py [--case lite_V_19_slim_dw|V_39] [--repeat 100] [--runs 1] \
        [--case-dir tests/data/golden_<case>]

Takes a golden case's raw outputs (``raw_outputs.npz`` in ``--case-dir``, by default the repository's
``tests/data/golden_<case>``: upstream's network outputs before post-processing), writes them as output bins for the case's images
repeated ``--repeat`` times under synthetic image ids, with a matching ``bin_info.json`` and a
ground-truth file repeated the same way, then times :func:`centermask2.offline.postprocess.postprocess_bins`
(read bins, rescale boxes, paste masks, RLE-encode) and :func:`centermask2.evaluation.evaluate_coco`
(bbox + segm, writing results and metrics), each ``--runs`` times in interleaved rounds
(:func:`centermask2.benchmark.measure`), and prints the median images/s for each and for both. The
AP printed is a sanity check: repeating images does not change it. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path


def _write_case(case_dir: Path, repeat: int, work: Path):
    """RAW folder, BinInfo and annotation file of the case's images repeated ``repeat`` times."""
    import numpy as np

    from centermask2.contract import default_output_specs
    from centermask2.offline.layout import BinImage, BinInfo, Manifest, output_path, write_array

    raw_npz = np.load(case_dir / "raw_outputs.npz")
    gt = json.loads((case_dir / "annotations_gt.json").read_text())
    originals = sorted(gt["images"], key=lambda im: im["id"])
    keys = sorted({k.split("_", 1)[0] for k in raw_npz.files}, key=int)
    if len(keys) != len(originals):
        raise ValueError(f"{case_dir}: {len(keys)} images in raw_outputs.npz, {len(originals)} in annotations_gt.json")
    k_max = max(raw_npz[f"{k}_boxes"].shape[0] for k in keys)
    mask_size = raw_npz[f"{keys[0]}_masks"].shape[-1]
    specs = default_output_specs(k_max, mask_size)
    raw_dir = work / "raw"
    raw_dir.mkdir()
    Manifest(outputs=specs, index_base=0, model=None).save(raw_dir)

    per_image = []
    for k in keys:
        n = raw_npz[f"{k}_boxes"].shape[0]
        arrays = {"num_detections": np.array([n], np.int64)}
        for spec in specs[:-1]:
            value = np.zeros(spec.shape, spec.dtype)
            value[0, :n] = raw_npz[f"{k}_{spec.name}"]
            arrays[spec.name] = value
        per_image.append(arrays)

    info = BinInfo(dtype="uint8", shape=[1, 3, 1344, 1344], input_format="BGR", min_size=0, max_size=0)
    images, annotations = [], []
    for r in range(repeat):
        for i, (k, im) in enumerate(zip(keys, originals)):
            image_id = r * len(keys) + i + 1
            stem = f"{image_id:012d}"
            _, h, w = raw_npz[f"{k}_input"].shape
            info.images.append(BinImage(image_id=image_id, file_name=f"{stem}.png", stem=stem, height=im["height"],
                                        width=im["width"], resized_height=int(h), resized_width=int(w),
                                        bin=f"{stem}.bin", sizes_bin=f"image_sizes/{stem}.bin"))
            for spec in specs:
                write_array(per_image[i][spec.name], output_path(raw_dir, stem, spec.index))
            images.append(dict(im, id=image_id, file_name=f"{stem}.png"))
            for a in gt["annotations"]:
                if a["image_id"] == im["id"]:
                    annotations.append(dict(a, id=len(annotations) + 1, image_id=image_id))
    ann_path = work / "annotations.json"
    ann_path.write_text(json.dumps(dict(gt, images=images, annotations=annotations)))
    return raw_dir, info, ann_path, Manifest.load(raw_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="lite_V_19_slim_dw", choices=["lite_V_19_slim_dw", "V_39"])
    p.add_argument("--case-dir", default=None,
                   help="the golden case's folder (default: the repository's tests/data/golden_<case>)")
    p.add_argument("--repeat", type=int, default=100, help="copies of the case's images (default 100)")
    add_timing_arguments(p, runs=1, warmup=0, threads=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from centermask2.benchmark import format_table, header, measure, summarize
    from centermask2.data.categories import coco_contiguous_to_dataset_id
    from centermask2.evaluation import evaluate_coco
    from centermask2.offline.postprocess import postprocess_bins

    case_dir = Path(args.case_dir) if args.case_dir else ROOT / "tests" / "data" / f"golden_{args.case}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw_dir, info, ann_path, manifest = _write_case(case_dir, args.repeat, work)
        n = len(info.images)
        last: dict = {}

        def postprocess() -> None:
            last["results"], last["summary"] = postprocess_bins(raw_dir, info, manifest, coco_contiguous_to_dataset_id(),
                                                                progress=False)

        def evaluate() -> None:  # the same round's results
            last["metrics"] = evaluate_coco(last["results"], ann_path, output_dir=work / "eval")

        stats = summarize(measure({"postprocess": postprocess, "evaluate": evaluate}, runs=args.runs,
                                  warmup=args.warmup))

    want = json.loads((case_dir / "metrics_gt.json").read_text())
    post_s, eval_s = stats["postprocess"].median, stats["evaluate"].median
    print(header(threads=None, runs=args.runs, warmup=args.warmup, notes=[
        f"case: {case_dir.name}  images: {n} ({args.repeat} x {n // args.repeat})  detections: {len(last['results'])}"]))
    rows = [
        ["postprocess (read bins, rescale, paste masks, RLE)", f"{post_s:.2f}", f"{n / post_s:.1f}",
         f"reading {1000 * last['summary'].read_s / n:.2f} ms/image"],
        ["evaluate (bbox + segm, write results/metrics)", f"{eval_s:.2f}", f"{n / eval_s:.1f}", ""],
        ["postprocess + evaluate", f"{post_s + eval_s:.2f}", f"{n / (post_s + eval_s):.1f}", ""],
    ]
    print(format_table(["stage", "median s", "images/s", "note"], rows))
    for task in ("bbox", "segm"):
        print(f"{task} AP {last['metrics'][task]['AP']:.3f} (golden, 1 copy: {want[task]['AP']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
