#!/usr/bin/env python3
"""What panoptic output costs: a Panoptic-CenterMask model vs its instance-only counterpart in
ONNX Runtime, and the post-processing time per image of the panoptic path.

    python tools/benchmark_panoptic.py --instance V_39_dynamic.onnx --panoptic panoptic_V_39_dynamic.onnx \\
        [--size 800x1216] [--image IMG] [--runs 5] [--warmup 1] [--threads 2]

Model: the two exported models on the same input (``--image`` resized as the models expect and
padded to ``--size``, by default the golden panoptic case's first image), one call each per round,
interleaved (:func:`centermask2.benchmark.measure`). Post-processing, on the panoptic model's
outputs for that image, each step timed in interleaved rounds: the instances back to the original
image (:func:`~centermask2.modeling.postprocessing.detector_postprocess`, as for instance models),
the semantic labels at the original size (:func:`~centermask2.modeling.panoptic.sem_seg_argmax`),
the combination (:func:`~centermask2.modeling.panoptic.combine_semantic_and_instance_outputs`) and
writing the PNGs (:func:`~centermask2.evaluation.panoptic.write_panoptic_image`). A script, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path

DEFAULT_IMAGE = ROOT / "tests" / "data" / "golden_panoptic_V_39" / "images" / "000000000001.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instance", required=True, help="exported instance-only model (e.g. V-39, dynamic)")
    p.add_argument("--panoptic", required=True, help="exported panoptic model (e.g. Panoptic V-39, dynamic)")
    p.add_argument("--size", default="800x1216", help="padded input HxW (default 800x1216)")
    p.add_argument("--image", default=str(DEFAULT_IMAGE), help="the image (default: the golden panoptic case's first)")
    add_timing_arguments(p)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from centermask2.benchmark import (
        backend_candidates,
        header,
        image_batch,
        measure,
        set_threads,
        timing_table,
    )
    from centermask2.data import load_and_resize, parse_hw
    from centermask2.engine.loop import image_results
    from centermask2.engine.sources import open_model
    from centermask2.evaluation.panoptic import write_panoptic_image
    from centermask2.modeling.panoptic import combine_semantic_and_instance_outputs, sem_seg_argmax

    set_threads(args.threads)
    size = parse_hw(args.size)
    sources = {"instance": open_model(args.instance, "onnxruntime", threads=args.threads),
               "panoptic": open_model(args.panoptic, "onnxruntime", threads=args.threads)}
    panoptic = sources["panoptic"]
    if panoptic.panoptic is None:
        p.error(f"{args.panoptic} is not a panoptic model")
    images, sizes = image_batch(args.image, panoptic, size)
    model_times = measure(backend_candidates(sources, images, sizes), runs=args.runs, warmup=args.warmup)

    _, original = load_and_resize(args.image, panoptic.spec)
    input_hw = (int(sizes[0, 0]), int(sizes[0, 1]))
    out = panoptic.backend.run({"images": images, "image_sizes": sizes})
    settings = panoptic.panoptic
    det, _ = image_results(out, 0, input_hw, original, 1, panoptic.category_ids)
    logits = torch.from_numpy(np.ascontiguousarray(out["sem_seg"][0]))
    labels = sem_seg_argmax(logits, input_hw, original, settings.size_divisibility, settings.common_stride)
    seg, segments = combine_semantic_and_instance_outputs(
        det, labels, overlap_thresh=settings.overlap_thresh, stuff_area_thresh=settings.stuff_area_limit,
        instances_score_thresh=settings.instances_confidence_thresh)
    with tempfile.TemporaryDirectory() as tmp:
        steps = {
            "instances (detector_postprocess + COCO records)":
                lambda: image_results(out, 0, input_hw, original, 1, panoptic.category_ids),
            "semantic labels (sem_seg_argmax)":
                lambda: sem_seg_argmax(logits, input_hw, original, settings.size_divisibility, settings.common_stride),
            "combination": lambda: combine_semantic_and_instance_outputs(
                det, labels, overlap_thresh=settings.overlap_thresh, stuff_area_thresh=settings.stuff_area_limit,
                instances_score_thresh=settings.instances_confidence_thresh),
            "PNGs (panoptic + semantic)":
                lambda: write_panoptic_image(tmp, 1, Path(args.image).name, seg.numpy(), segments,
                                             labels.numpy().astype(np.uint8)),
        }
        post_times = measure(steps, runs=args.runs, warmup=args.warmup)
    print(header(threads=args.threads, runs=args.runs, warmup=args.warmup, input_shape=images.shape,
                 notes=[f"image: {Path(args.image).name} {original[0]}x{original[1]}, resized {input_hw[0]}x{input_hw[1]}, "
                        f"padded to {size[0]}x{size[1]}; {len(segments)} segments"]))
    print("\nModel (ONNX Runtime):")
    print(timing_table(model_times, baseline="instance"))
    print("\nPanoptic post-processing of one image:")
    print(timing_table(post_times, name="step"))
    total = sum(sorted(t)[len(t) // 2] for name, t in post_times.items() if not name.startswith("instances"))
    print(f"\nPanoptic steps on top of the instance post-processing: {1000 * total:.1f} ms per image (sum of medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
