"""Fine-tune (or train) a CenterMask2 model on COCO-format data, without detectron2.

    python tools/train_net.py --config-file configs/centermask/centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml \\
        --coco-json my/annotations.json --images my/images --output-dir output/mine \\
        --eval-json my/val.json --eval-images my/val_images \\
        MODEL.WEIGHTS centermask2-lite-V-19-slim-dw-eSE-FPN-ms-4x.pth MODEL.FCOS.NUM_CLASSES 3 \\
        MODEL.ROI_HEADS.NUM_CLASSES 3 SOLVER.IMS_PER_BATCH 8 SOLVER.BASE_LR 0.005 SOLVER.MAX_ITER 2000

Reads upstream's training keys (``SOLVER.*``, ``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN``/
``RANDOM_FLIP``, ``TEST.EVAL_PERIOD``, ``SEED``, ``DATALOADER.NUM_WORKERS``). ``MODEL.WEIGHTS``
may be a full checkpoint (tensors whose shape changed with ``NUM_CLASSES`` start fresh, as
detectron2's checkpointer does), a backbone-only checkpoint, or empty (train from nothing).
Writes OUTPUT_DIR/model_XXXXXXX.pth every ``SOLVER.CHECKPOINT_PERIOD`` iterations and
model_final.pth (atomically; ``last_checkpoint`` names the newest), metrics.jsonl (one line per
iteration), config.yaml, and, with --eval-json, metrics_iterXXXXXXX.json. ``--resume`` continues
from OUTPUT_DIR's last checkpoint with the same weights, momentum, schedule and data order as
a run that was never stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EXIT_OK, InputError
from .common import (
    add_config_arguments,
    add_overrides,
    new_parser,
    num_workers_int,
    parse_args,
    run_main,
    setup_logging,
    threads_int,
)

logger = logging.getLogger("train_net")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(
        "train_net.py",
        "Train CenterMask2 on COCO-format instance segmentation data with upstream's losses and solver.",
        "Trailing KEY VALUE pairs override the config, e.g. MODEL.WEIGHTS model.pth SOLVER.MAX_ITER 2000.",
    )
    add_config_arguments(p, required=True)
    p.add_argument("--coco-json", help="training annotations (COCO instances, polygon or RLE masks)")
    p.add_argument("--images", help="folder the training file_name entries are relative to")
    p.add_argument("--dataset", help="a registered dataset instead: coco_2017_train (evaluated on coco_2017_val)")
    p.add_argument("--eval-json", help="held-out annotations to evaluate on (every TEST.EVAL_PERIOD iterations, if set, "
                   "and at the end)")
    p.add_argument("--eval-images", help="folder of the held-out images")
    p.add_argument("--output-dir", required=True, help="checkpoints, metrics.jsonl and evaluation results")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on --eval-json and stop")
    p.add_argument("--num-workers", type=num_workers_int, default=None,
                   help="data-loading processes (default: DATALOADER.NUM_WORKERS, at most the CPU count - 1)")
    p.add_argument("--threads", type=threads_int, default=None,
                   help="CPU threads of the training process (at most 4x the CPUs, at least 64)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_overrides(p, "config overrides: KEY VALUE ...")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 ok, 2 bad arguments or input, 130 interrupted)."""
    return run_main(_main, argv, resumable=True)


def load_initial_weights(model: Any, path: str) -> None:
    """Load ``MODEL.WEIGHTS`` to start training: what fits is loaded, the rest keeps its initial
    values (logged). A backbone-only checkpoint (names without ``backbone.bottom_up.``) is
    recognized and loaded into the backbone."""
    from ..checkpoint import apply_state_dict, check_weights_path, checkpoint_size_limit, load_state_dict_file

    check_weights_path(path)
    state = load_state_dict_file(path, max_zip_bytes=checkpoint_size_limit(model))  # the size guard of every reader
    names = set(model.state_dict())
    if not any(k in names for k in state) and any(f"backbone.bottom_up.{k}" in names for k in state):
        logger.info("%s is a backbone-only checkpoint; loading it into backbone.bottom_up", path)
        state = {f"backbone.bottom_up.{k}": v for k, v in state.items()}
    apply_state_dict(model, state, allow_incomplete=True, source=path)


def _data_args(args: argparse.Namespace) -> None:
    from ..data.catalog import resolve_dataset

    if args.dataset:
        if args.coco_json or args.images:
            raise InputError("--dataset names both the images and the annotations; give it alone, or --coco-json/--images")
        args.images, args.coco_json = resolve_dataset(args.dataset)
        if args.eval_json is None and args.dataset == "coco_2017_train":
            args.eval_images, args.eval_json = resolve_dataset("coco_2017_val")
    if not args.eval_only and not (args.coco_json and args.images):
        raise InputError("give the training data: --coco-json ANN.json --images DIR (or --dataset coco_2017_train)")
    if bool(args.eval_json) != bool(args.eval_images):
        raise InputError("--eval-json and --eval-images go together (the held-out annotations and their folder)")
    if args.eval_only and not args.eval_json:
        raise InputError("--eval-only needs --eval-json ANN.json --eval-images DIR")


def make_evaluator(cfg: Any, eval_json: str, eval_images: str, output_dir: Path, progress: bool):
    """``evaluate(model, iteration) -> metrics``: our COCO evaluator on the held-out set, with
    the test-time resize of ``cfg`` (as ``tester.py`` runs it)."""
    from ..data.catalog import list_images
    from ..data.categories import category_mapping
    from ..engine.loop import run_inference
    from ..engine.sources import torch_model_source
    from ..evaluation import evaluate_coco, load_coco_ground_truth
    from ..fileio import atomic_write_json, ensure_writable_dir

    records = list_images(eval_images, eval_json)
    gt = load_coco_ground_truth(eval_json)  # checked before training, not after it
    ids, _ = category_mapping(eval_json, int(cfg.MODEL.FCOS.NUM_CLASSES))

    def evaluate(model: Any, iteration: int) -> dict[str, Any]:
        source = torch_model_source(model, cfg, label=f"PyTorch iteration {iteration}")
        results, _summary = run_inference(source, records, ids, progress=progress)
        out = ensure_writable_dir(output_dir / f"eval_iter{iteration:07d}", "--output-dir")
        atomic_write_json(results, out / "coco_instances_results.json")
        metrics = evaluate_coco(results, gt, output_dir=out)
        logger.info("iteration %d: bbox AP %.2f, segm AP %.2f", iteration, metrics["bbox"]["AP"],
                    metrics.get("segm", {}).get("AP", float("nan")))
        return metrics

    return evaluate


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    _data_args(args)

    import torch

    from ..config import load_config
    from ..data.training import AugmentSettings, CollatedBatches, TrainingBatches, load_training_annotations
    from ..engine.torch_backend import resolve_device
    from ..engine.trainer import SolverSettings, Trainer, latest_checkpoint, load_training_checkpoint
    from ..fileio import atomic_write_bytes, ensure_writable_dir
    from ..modeling import build_model

    cfg = load_config(args.config_file, args.opts)
    out = Path(args.output_dir)
    ensure_writable_dir(out, "--output-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(cfg.MODEL.DEVICE)  # the stages' rule: cuda without a GPU runs on the CPU, warned

    evaluate = None
    if args.eval_json:
        evaluate = make_evaluator(cfg, args.eval_json, args.eval_images, out, not args.no_progress)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise InputError("--eval-only needs MODEL.WEIGHTS model.pth")
        from ..checkpoint import check_weights_path, load_weights

        check_weights_path(cfg.MODEL.WEIGHTS)
        model = build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS)
        model.to(device)
        assert evaluate is not None
        evaluate(model, 0)
        return EXIT_OK

    solver = SolverSettings.from_config(cfg)
    seed = int(cfg.SEED)
    resume_from = latest_checkpoint(out) if args.resume else None
    if args.resume and resume_from is None:
        logger.info("--resume: no checkpoint in %s yet; starting at iteration 0", out)
    if seed < 0 and resume_from is None:
        seed = int.from_bytes(os.urandom(3), "little")
        logger.info("SEED is %d (pass SEED %d to repeat this run)", seed, seed)
    torch.manual_seed(max(seed, 0))  # the initial weights of what the checkpoint does not provide
    model = build_model(cfg)
    if seed < 0:  # resuming: the run's seed is in its checkpoint (read with the model's size guard)
        seed = int(load_training_checkpoint(resume_from, model).get("seed", 0))
        logger.info("SEED is %d (pass SEED %d to repeat this run)", seed, seed)
    cfg.defrost()
    cfg.SEED = seed
    cfg.freeze()

    images, ids, names = load_training_annotations(args.coco_json, args.images,
                                                   filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS))
    num_classes = int(cfg.MODEL.FCOS.NUM_CLASSES)
    if len(names) > num_classes or int(cfg.MODEL.ROI_HEADS.NUM_CLASSES) != num_classes:
        raise InputError(
            f"{args.coco_json} has {len(names)} categories but MODEL.FCOS.NUM_CLASSES={num_classes} and "
            f"MODEL.ROI_HEADS.NUM_CLASSES={cfg.MODEL.ROI_HEADS.NUM_CLASSES}; set both to {len(names)}"
        )
    logger.info("Training data: %d images, %d instances, %d classes (%s)", len(images),
                sum(len(im.instances) for im in images), len(names), ", ".join(names))

    if resume_from is None and cfg.MODEL.WEIGHTS:
        load_initial_weights(model, cfg.MODEL.WEIGHTS)
    elif resume_from is None:
        logger.info("MODEL.WEIGHTS is empty: training from initial weights")
    atomic_write_bytes(cfg.dump().encode(), out / "config.yaml")

    batches = CollatedBatches(
        TrainingBatches(images, AugmentSettings.from_config(cfg), solver.ims_per_batch, seed),
        model.size_divisibility,
    )
    workers = args.num_workers
    if workers is None:
        workers = max(0, min(int(cfg.DATALOADER.NUM_WORKERS), (os.cpu_count() or 1) - 1))
    trainer = Trainer(model, batches, solver, out, seed=seed, device=device, num_workers=workers,
                      eval_period=int(cfg.TEST.EVAL_PERIOD), evaluate=evaluate,
                      progress=not args.no_progress)
    if resume_from is not None:
        trainer.resume(resume_from)
    summary = trainer.train()
    summary.log()
    logger.info("Checkpoints: %s (newest: %s)", out, latest_checkpoint(out))
    return EXIT_OK
