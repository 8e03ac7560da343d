#!/usr/bin/env python3
"""Latency (and AP) of one model in every runtime and precision: one table.

    python tools/benchmark.py --config-file configs/centermask/centermask_V_39_eSE_FPN_ms_3x.yaml \\
        [--weights ckpt.pth] [--onnx V_39_dynamic.onnx] [--int8 V_39_dynamic_int8.onnx] \\
        [--openvino fp32 bf16] [--size 800x1216] [--image IMG] [--images DIR --coco-json ANN.json] \\
        [--runs 5] [--warmup 1] [--threads 2] [KEY VALUE ...]

Rows: PyTorch eager (``--config-file``; weights from ``--weights`` or ``MODEL.WEIGHTS``, else the
network's random initial weights, and the header says so), ONNX Runtime on ``--onnx`` (fp32) and on
``--int8`` (the int8 model of ``tools/quantize.py``), and with ``--openvino`` OpenVINO on each at
each precision (fp32, bf16, fp16; for the int8 model, what its float layers compute in; a CPU
without bf16 runs fp32 and the row says so). Every model is opened by ``open_model`` with the same
``--threads`` and timed on the same input (random pixels filling ``--size``, or ``--image`` resized
and padded to it): one call of the network, raw pixels to padded outputs, pre- and post-processing
excluded; each round runs every row once, in turn; medians (min, max) and the ratio to ONNX Runtime
fp32 (else the first row). With ``--images`` and ``--coco-json`` each row also runs the whole
dataset (``run_inference``: read, resize, pad, network, post-processing) and reports bbox and segm
AP and their difference to the first float32 row. The header names the CPU, the software, the
threads, the input and the rounds. A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from centermask2.benchmark import add_timing_arguments  # noqa: E402 - after the path

DEFAULT_SIZE = (800, 1216)


def _torch_opts(args: argparse.Namespace, tmp: str) -> tuple[list[str], str | None]:
    """The config overrides for the PyTorch row, and a note when it runs with random weights
    (written to a checkpoint in ``tmp`` so that the row opens through ``open_model`` too)."""
    from centermask2.config import load_config

    opts = [*args.opts, "MODEL.DEVICE", args.device]
    if args.weights:
        return [*opts, "MODEL.WEIGHTS", args.weights], None
    cfg = load_config(args.config_file, opts)
    if cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS):
        return opts, None
    import torch

    from centermask2.modeling import build_model

    path = os.path.join(tmp, "random_init.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return [*opts, "MODEL.WEIGHTS", path], "PyTorch eager: the network's random initial weights (no --weights)"


def _signed(value: float, reference: float | None) -> str:
    if reference is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({value - reference:+.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--config-file", default=None, help="model config: adds the PyTorch eager row")
    p.add_argument("--weights", default=None, help="checkpoint for the PyTorch row (default MODEL.WEIGHTS, else random)")
    p.add_argument("--onnx", default=None, help="exported model: adds the ONNX Runtime fp32 row")
    p.add_argument("--int8", default=None, metavar="ONNX", help="int8 model (tools/quantize.py): adds its rows")
    p.add_argument("--openvino", nargs="*", default=None, metavar="PRECISION", choices=["fp32", "bf16", "fp16"],
                   help="also OpenVINO (CPU) on --onnx and --int8, at these precisions (default fp32)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help=f"padded input HxW (default: a static model's size, else {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--image", default=None, help="time on this image (resized, padded to --size), not random pixels")
    p.add_argument("--images", default=None, help="dataset images: adds AP columns (with --coco-json)")
    p.add_argument("--coco-json", default=None, help="the dataset's COCO annotations")
    add_timing_arguments(p)
    p.add_argument("--requests", type=int, default=1, metavar="N",
                   help="also each OpenVINO row in its throughput mode with N infer requests (0: OpenVINO's choice)")
    p.add_argument("--shapes", type=int, default=0, metavar="N",
                   help="AP columns on the first N held-out images of the sample's shapes dataset, generated in a "
                   "temporary folder (the sample model's test set: --shapes 120)")
    p.add_argument("--stream", type=int, default=8, metavar="CALLS",
                   help="model calls in the images/s-on-a-stream measurement (default 8; 0: none)")
    p.add_argument("--no-roofline", action="store_true",
                   help="skip the matrix-product peaks and the %% of floor column")
    p.add_argument("--peak-size", type=int, default=2048, metavar="N",
                   help="the N x N x N matrix product that measures each precision's peak (default 2048)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"], help="ONNX Runtime's provider")
    p.add_argument("--device", default="cpu", help="PyTorch's MODEL.DEVICE (default cpu)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for the PyTorch row: KEY VALUE ...")
    args = p.parse_args(argv)
    if not (args.config_file or args.onnx or args.int8):
        p.error("give at least one of --config-file, --onnx, --int8")
    if args.opts and not args.config_file:
        p.error("KEY VALUE overrides are for the PyTorch row (--config-file)")
    if args.openvino is not None and not (args.onnx or args.int8):
        p.error("--openvino runs --onnx / --int8: give one")
    if bool(args.images) != bool(args.coco_json):
        p.error("--images and --coco-json go together")
    if args.shapes and args.images:
        p.error("--shapes is instead of --images / --coco-json")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from centermask2.benchmark import (
        coco_ap,
        format_table,
        header,
        image_batch,
        measure,
        model_inputs,
        model_macs,
        ms,
        open_target,
        random_batch,
        runtime_targets,
        set_threads,
        stream_rate,
        summarize,
    )
    from centermask2.data import parse_hw
    from centermask2.errors import CenterMask2Error
    from centermask2.roofline import floor_fraction, matmul_peaks

    notes = []
    set_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="benchmark_") as tmp:
            opts = ()
            if args.config_file:
                opts, note = _torch_opts(args, tmp)
                notes += [note] if note else []
            targets = runtime_targets(config=args.config_file, opts=opts, onnx=args.onnx, int8=args.int8,
                                      openvino=args.openvino, threads=args.threads, provider=args.provider,
                                      requests=args.requests)
            sources = [open_target(t) for t in targets]
            if args.shapes:
                from centermask2.data.shapes import make_split

                dataset = Path(tempfile.mkdtemp(prefix="benchmark_shapes_"))  # removed after the AP columns
                args.coco_json = make_split(dataset, "val", args.shapes, progress=False)
                args.images = dataset / "val" / "images"
                notes.append(f"AP on the first {args.shapes} held-out images of the shapes dataset (seed 0)")
        static = {tuple(s.backend.metadata.input_size) for s in sources
                  if s.backend.metadata is not None and s.backend.metadata.input_size is not None}
        if len(static) > 1:
            p.error(f"the models are static at different sizes {sorted(static)}; time them separately")
        h, w = parse_hw(args.size) if args.size else (next(iter(static)) if static else DEFAULT_SIZE)
        if static and (h, w) != next(iter(static)):
            p.error(f"a model is static {'x'.join(map(str, next(iter(static))))}; --size must match")
        for t, s in zip(targets, sources):
            d = s.spec.size_divisibility
            if h % d or w % d:
                p.error(f"--size {h}x{w}: {t.label} needs multiples of {d}")
        batch = max([s.backend.static_batch or 1 for s in sources])
        images, sizes = image_batch(args.image, sources[0], (h, w), batch) if args.image else random_batch(h, w, batch)

        last: dict[str, dict] = {}
        candidates = {}
        for t, s in zip(targets, sources):
            feed = model_inputs(s, images, sizes)
            candidates[t.label] = lambda label=t.label, backend=s.backend, feed=feed: last.__setitem__(
                label, backend.run(feed))
        times = summarize(measure(candidates, runs=args.runs, warmup=args.warmup))
        streams = {t.label: stream_rate(s, model_inputs(s, images, sizes), args.stream)
                   for t, s in zip(targets, sources)} if args.stream else {}
        if args.images:
            ap = {t.label: coco_ap(s, args.images, args.coco_json) for t, s in zip(targets, sources)}
            if args.shapes:
                shutil.rmtree(Path(args.images).parent.parent, ignore_errors=True)
        else:
            ap = {}
        roof = None
        if not args.no_roofline:
            macs = model_macs(sources[0], h, w)
            needed = sorted({t.peak_precision for t in targets}, key=["fp32", "bf16", "int8"].index)
            peaks = matmul_peaks(args.threads, needed, size=args.peak_size, runs=max(args.runs, 3))
            roof = (macs, peaks)
    except CenterMask2Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    labels = [t.label for t in targets]
    baseline = "ONNX Runtime fp32" if "ONNX Runtime fp32" in times else labels[0]
    reference = next((t.label for t in targets if t.float32), None) if ap else None
    headers = ["runtime", "model", "median ms", "min ms", "max ms", f"x {baseline}", "detections"]
    if streams:
        headers.append("images/s, stream")
    if roof:
        headers.append("% of floor")
    if ap:
        headers += ["bbox AP", "segm AP"]
    rows = []
    for t in targets:
        stat = times[t.label]
        row = [t.label, Path(t.model).name, ms(stat.median), ms(stat.min), ms(stat.max),
               f"{stat.median / times[baseline].median:.2f}", int(last[t.label]["num_detections"].sum())]
        if streams:
            row.append(f"{streams[t.label]:.2f}")
        if roof:
            # a throughput row (several calls in flight) by its stream rate, the others by one call's latency
            per_call = 1.0 / streams[t.label] * batch if streams and t.options.get("requests", 1) != 1 else stat.median
            share = floor_fraction(per_call, roof[0].total * batch, roof[1].get(t.peak_precision))
            row.append(f"{100 * share:.0f}% ({t.peak_precision})" if share is not None else None)
        if ap:
            ref = ap.get(reference, {}) if t.label != reference else {}
            row += [_signed(ap[t.label][task], ref.get(task)) if task in ap[t.label] else None
                    for task in ("bbox", "segm")]
        rows.append(row)
    if args.image:
        notes.append(f"image: {args.image} (resized, padded to {h}x{w})")
    if ap:
        notes.append(f"AP: {args.coco_json} ({args.images}), whole pipeline; (+x) = difference to {reference}")
    if streams:
        notes.append(f"images/s, stream: {args.stream} calls through the in-process executor (as a folder runs; "
                     "OpenVINO's throughput rows keep several in flight)")
    if roof:
        macs, peaks = roof
        parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in macs.by_part.items())
        notes.append(f"work: {macs.gmac * batch:.1f} GMAC of convolutions and linear layers at {h}x{w} "
                     f"(batch {batch}; {parts})")
        for precision, peak in peaks.items():
            if peak.gmacs:
                rates = ", ".join(f"{k} {v:.0f}" for k, v in peak.rates.items())
                notes.append(f"{precision} peak: {peak.gmacs:.0f} GMAC/s ({args.peak_size}^3 matrix product; {rates}) "
                             f"-> floor {macs.total * batch / peak.gmacs / 1e6:.0f} ms")
            else:
                notes.append(f"{precision} peak: none ({peak.note})")
        notes.append("% of floor: the floor (work at the row's precision peak) over the median latency (rows with "
                     "several requests: over the time per image on the stream)")
    print(header(threads=args.threads, runs=args.runs, warmup=args.warmup, input_shape=(batch, 3, h, w),
                 notes=notes))
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
