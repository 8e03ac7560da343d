"""Fine-tuning: upstream's solver (SGD, warmup + multi-step LR) around
:meth:`~centermask2.modeling.CenterMask.training_losses`.

Reads upstream's training keys verbatim (``SOLVER.*``, ``INPUT.*_TRAIN``, ``TEST.EVAL_PERIOD``,
``SEED``). Checkpoints are plain ``torch.save`` dicts (``model``, ``optimizer``, ``iteration``,
``seed``) written atomically; the toolkit's safe loader reads their ``model``. A run resumed
from its last checkpoint continues at the saved iteration with the optimizer's momentum, and,
because every batch and random draw is a function of ``(seed, iteration)``, reaches the same
weights, learning rate and losses as a run that was never interrupted.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CenterMask2Error, InputError
from ..fileio import atomic_write_json, check_input_file, plain_name

__all__ = ["TrainingDivergedError", "SolverSettings", "lr_factor", "build_optimizer", "Trainer", "TrainSummary",
           "latest_checkpoint", "load_training_checkpoint"]

logger = logging.getLogger(__name__)

class TrainingDivergedError(CenterMask2Error, FloatingPointError):
    """A loss became NaN or infinite (exit status 1; the last checkpoint is intact)."""

    exit_code = 1


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@dataclass(frozen=True)
class SolverSettings:
    """``SOLVER`` keys (detectron2's meanings)."""

    ims_per_batch: int = 16
    base_lr: float = 0.01
    max_iter: int = 90000
    steps: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    warmup_method: str = "linear"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0001
    weight_decay_norm: float = 0.0
    weight_decay_bias: float | None = None
    bias_lr_factor: float = 1.0
    checkpoint_period: int = 5000
    clip_gradients: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.warmup_method not in ("linear", "constant"):
            raise InputError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {self.warmup_method!r}")
        if self.max_iter < 1 or self.ims_per_batch < 1:
            raise InputError(
                f"SOLVER.MAX_ITER ({self.max_iter}) and SOLVER.IMS_PER_BATCH ({self.ims_per_batch}) must be >= 1"
            )
        if list(self.steps) != sorted(self.steps):
            raise InputError(f"SOLVER.STEPS must be increasing, got {list(self.steps)}")

    @classmethod
    def from_config(cls, cfg: Any) -> SolverSettings:
        s = cfg.SOLVER
        if s.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
            raise InputError(f"SOLVER.LR_SCHEDULER_NAME={s.LR_SCHEDULER_NAME!r}: only 'WarmupMultiStepLR' is supported")
        steps = tuple(int(v) for v in s.STEPS)
        if list(steps) != sorted(steps):  # checked before the steps past MAX_ITER are left out
            raise InputError(f"SOLVER.STEPS must be increasing, got {list(steps)}")
        late = [v for v in steps if v > int(s.MAX_ITER)]
        if late:
            logger.warning("SOLVER.STEPS %s lie beyond SOLVER.MAX_ITER=%d and are ignored", late, int(s.MAX_ITER))
        clip = dict(s.CLIP_GRADIENTS) if s.CLIP_GRADIENTS.ENABLED else {}
        return cls(
            ims_per_batch=int(s.IMS_PER_BATCH), base_lr=float(s.BASE_LR), max_iter=int(s.MAX_ITER),
            steps=tuple(v for v in steps if v <= int(s.MAX_ITER)), gamma=float(s.GAMMA),
            warmup_iters=int(s.WARMUP_ITERS), warmup_factor=float(s.WARMUP_FACTOR), warmup_method=str(s.WARMUP_METHOD),
            momentum=float(s.MOMENTUM), nesterov=bool(s.NESTEROV), weight_decay=float(s.WEIGHT_DECAY),
            weight_decay_norm=float(s.WEIGHT_DECAY_NORM),
            weight_decay_bias=None if s.WEIGHT_DECAY_BIAS is None else float(s.WEIGHT_DECAY_BIAS),
            bias_lr_factor=float(s.BIAS_LR_FACTOR), checkpoint_period=int(s.CHECKPOINT_PERIOD), clip_gradients=clip,
        )


def lr_factor(iteration: int, s: SolverSettings) -> float:
    """Multiplier of ``BASE_LR`` at ``iteration`` (detectron2's ``WarmupMultiStepLR``):
    ``gamma ** (steps passed)``, times the warmup factor during the first ``WARMUP_ITERS``."""
    factor = s.gamma ** bisect.bisect_right(list(s.steps), iteration)
    if iteration < s.warmup_iters:
        if s.warmup_method == "constant":
            factor *= s.warmup_factor
        else:
            alpha = iteration / s.warmup_iters
            factor *= s.warmup_factor * (1 - alpha) + alpha
    return factor


def build_optimizer(model: nn.Module, s: SolverSettings) -> torch.optim.SGD:
    """SGD with detectron2's parameter groups: normalization layers' parameters take
    ``WEIGHT_DECAY_NORM``; biases take ``BASE_LR * BIAS_LR_FACTOR`` and ``WEIGHT_DECAY_BIAS``.
    Each group keeps its own ``initial_lr`` that the schedule scales."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = s.base_lr, s.weight_decay
            if isinstance(module, _NORM_TYPES):
                wd = s.weight_decay_norm
            elif name == "bias":
                lr = s.base_lr * s.bias_lr_factor
                wd = s.weight_decay if s.weight_decay_bias is None else s.weight_decay_bias
            groups.append({"params": [p], "lr": lr, "initial_lr": lr, "weight_decay": wd})
    if not groups:
        raise InputError("the model has no trainable parameter (is everything frozen?)")
    return torch.optim.SGD(groups, lr=s.base_lr, momentum=s.momentum, nesterov=s.nesterov)


#: the file naming a run's newest checkpoint, and the most bytes it may have (one file name)
LAST_CHECKPOINT = "last_checkpoint"
_MAX_MARKER_BYTES = 4096


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``output_dir/last_checkpoint``, if the file exists.

    The file is read as what :meth:`Trainer.save` writes: one checkpoint's file name, inside
    ``output_dir`` (never a path elsewhere, nor through a link).

    Raises:
        InputError: the file is not one this toolkit writes (too large, not a plain file name, a
            link), or names a checkpoint that is not a regular file in ``output_dir``.
    """
    folder = Path(output_dir)
    marker = folder / LAST_CHECKPOINT
    if not os.path.lexists(marker):
        return None
    fix = "delete it to train from the start, or give --output-dir the run's own folder"
    if marker.is_symlink():
        raise InputError(f"{str(marker)!r} is a symbolic link; training writes a plain file there: {fix}")
    check_input_file(marker, "training progress file", hint=fix, max_bytes=_MAX_MARKER_BYTES)
    try:
        name = marker.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {str(marker)!r} ({exc}): {fix}") from None
    try:
        plain_name(name)
    except InputError:
        raise InputError(
            f"{str(marker)!r} names {name[:200]!r}, which is not a file in the output folder {str(folder)!r}; "
            f"training writes only a checkpoint's file name there: {fix}"
        ) from None
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise InputError(f"{str(marker)!r} names {name!r}, which is not a checkpoint file in {str(folder)!r} "
                         f"(missing, or not a regular file): {fix}")
    return path


def load_training_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """A checkpoint :meth:`Trainer.save` wrote, read with the size guard of ``model``'s checkpoints
    (:func:`~centermask2.checkpoint.checkpoint_size_limit`), its keys checked.

    Raises:
        InputError: unreadable, too large, or not a training checkpoint; the message starts
            ``cannot resume from <path>``.
    """
    from ..checkpoint import checkpoint_size_limit, read_checkpoint

    try:
        state = read_checkpoint(path, max_bytes=checkpoint_size_limit(model))
    except CenterMask2Error as exc:
        raise InputError(f"cannot resume from {os.fspath(path)!r}: {exc}") from exc
    missing = {"model", "optimizer", "iteration"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise InputError(
            f"{os.fspath(path)!r} is not a training checkpoint of tools/train_net.py (no {sorted(missing)}); "
            "start it as MODEL.WEIGHTS instead of --resume"
        )
    for key, minimum in (("iteration", 0), ("seed", 0), ("ims_per_batch", 1)):
        value = state.get(key, minimum)
        if type(value) is not int or value < minimum:
            raise InputError(f"cannot resume from {os.fspath(path)!r}: its {key!r} is {value!r:.40}, not an integer "
                             f">= {minimum}; it was not written by tools/train_net.py")
    return state


@dataclass
class TrainSummary:
    """What a run did."""

    start_iter: int = 0
    end_iter: int = 0
    seconds: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)

    def log(self) -> None:
        n = self.end_iter - self.start_iter
        per = self.seconds / n if n else float("nan")
        terms = "  ".join(f"{k}={v:.4f}" for k, v in self.last_losses.items())
        logger.info("trained iterations %d-%d in %.1f s (%.2f s/iter); last: %s", self.start_iter, self.end_iter,
                    self.seconds, per, terms)


class Trainer:
    """Runs the solver.

    Args:
        model: a :class:`~centermask2.modeling.CenterMask` (weights loaded).
        batches: indexable by iteration, each item the raw batch
            ``(images uint8 [B,3,H,W], sizes [B,2], targets)``; iterated through a
            :class:`torch.utils.data.DataLoader` with ``num_workers`` processes.
        solver: :class:`SolverSettings`.
        output_dir: checkpoints and ``metrics.jsonl``.
        seed: run seed (the ROI sampling draws of iteration ``i`` use ``seed + i``).
        device: where the model trains.
        evaluate: called as ``evaluate(model, iteration)`` every ``eval_period`` iterations
            (``eval_period > 0``) and at the end; returns metrics to log.
        channels_last: train in channels-last memory format (default: on CPUs).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Any,
        solver: SolverSettings,
        output_dir: str | os.PathLike,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        eval_period: int = 0,
        evaluate: Callable[[nn.Module, int], dict[str, Any]] | None = None,
        progress: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        self.device = torch.device(device)
        # channels-last convolutions train about 20% faster on CPUs (oneDNN); same values up to rounding
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.batches = batches
        self.solver = solver
        self.output_dir = Path(output_dir)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.eval_period = int(eval_period)
        self.evaluate = evaluate
        self.progress = progress
        self.optimizer = build_optimizer(self.model, solver)
        self.iteration = 0

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint_path(self, iteration: int) -> Path:
        return self.output_dir / ("model_final.pth" if iteration >= self.solver.max_iter else f"model_{iteration - 1:07d}.pth")

    def save(self, iteration: int) -> Path:
        """Write the state after ``iteration`` iterations atomically; point ``last_checkpoint`` at it."""
        path = self.checkpoint_path(iteration)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        state = {
            "model": {k: v.contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "iteration": iteration,
            "seed": self.seed,
            "ims_per_batch": self.solver.ims_per_batch,
        }
        torch.save(state, tmp)
        os.replace(tmp, path)
        marker = self.output_dir / LAST_CHECKPOINT
        marker_tmp = marker.with_name(f"{LAST_CHECKPOINT}.tmp{os.getpid()}")
        marker_tmp.write_text(path.name)
        os.replace(marker_tmp, marker)
        logger.info("saved %s", path)
        return path

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint this trainer wrote (model, optimizer, iteration), read by
        :func:`load_training_checkpoint`."""
        state = load_training_checkpoint(path, self.model)
        if int(state.get("seed", self.seed)) != self.seed or int(state.get("ims_per_batch", self.solver.ims_per_batch)) != self.solver.ims_per_batch:
            raise InputError(
                f"{os.fspath(path)!r} was trained with SEED={state.get('seed')} and SOLVER.IMS_PER_BATCH="
                f"{state.get('ims_per_batch')}; resume with the same values (or start a new --output-dir)"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"cannot resume from {os.fspath(path)!r}: it does not fit this model and solver ({exc})"
                             ) from exc
        self.iteration = int(state["iteration"])
        self._truncate_metrics()
        logger.info("resuming from %s at iteration %d", path, self.iteration)

    def _truncate_metrics(self) -> None:
        """Drop ``metrics.jsonl`` lines of iterations after the checkpoint (they are redone)."""
        from ..fileio import atomic_write_bytes, open_input_file, parse_json_text

        path = self.output_dir / "metrics.jsonl"
        if not os.path.lexists(path):
            return
        with open_input_file(path, "metrics file", follow_links=False) as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
        kept = []
        for line in lines:
            try:
                iteration = parse_json_text(line, "a line", "metrics line")["iteration"]
            except (InputError, KeyError, TypeError):
                continue  # a line cut short by the interruption
            if type(iteration) is int and iteration <= self.iteration:
                kept.append(line + "\n")
        atomic_write_bytes("".join(kept).encode(), path)

    # --- the loop ----------------------------------------------------------------------------
    def _set_lr(self, iteration: int) -> float:
        f = lr_factor(iteration, self.solver)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        return self.solver.base_lr * f

    def _clip(self) -> None:
        c = self.solver.clip_gradients
        if not c:
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        if c.get("CLIP_TYPE", "value") == "value":
            torch.nn.utils.clip_grad_value_(params, float(c.get("CLIP_VALUE", 1.0)))
        else:
            torch.nn.utils.clip_grad_norm_(params, float(c.get("CLIP_VALUE", 1.0)), float(c.get("NORM_TYPE", 2.0)))

    def step(self, iteration: int, batch: Any) -> dict[str, float]:
        """One solver step on ``batch``; returns the loss terms and the learning rate."""
        raw, sizes, targets = batch
        raw, sizes = raw.to(self.device), sizes.to(self.device)
        lr = self._set_lr(iteration)
        torch.manual_seed(self.seed + iteration)  # the ROI sampling draws
        self.model.train()
        images = self.model.normalize(raw, sizes)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        losses = self.model.training_losses(images, sizes, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise TrainingDivergedError(
                f"loss became {float(total)} at iteration {iteration} ({ {k: float(v) for k, v in losses.items()} }); "
                "lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._clip()
        self.optimizer.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["total_loss"] = float(total.detach())
        out["lr"] = lr
        return out

    def train(self) -> TrainSummary:
        """Train from :attr:`iteration` to ``max_iter``; checkpoints every ``CHECKPOINT_PERIOD``
        iterations and at the end. Interrupting loses at most the steps since the last one."""
        from tqdm import tqdm

        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary = TrainSummary(start_iter=self.iteration, end_iter=self.iteration)
        if self.iteration >= self.solver.max_iter:
            logger.info("already trained to SOLVER.MAX_ITER=%d", self.solver.max_iter)
            return summary
        loader = torch.utils.data.DataLoader(
            self.batches,
            batch_size=None,
            sampler=range(self.iteration, self.solver.max_iter),
            num_workers=self.num_workers,
            collate_fn=_as_is,
        )
        metrics_file = self.output_dir / "metrics.jsonl"
        start = time.perf_counter()
        bar = tqdm(total=self.solver.max_iter, initial=self.iteration, unit="it", desc="train", disable=not self.progress)
        try:
            for iteration, batch in zip(range(self.iteration, self.solver.max_iter), loader):
                t0 = time.perf_counter()
                record = self.step(iteration, batch)
                self.iteration = iteration + 1
                record["iteration"] = self.iteration
                record["seconds"] = round(time.perf_counter() - t0, 4)  # this step's compute time
                with open(metrics_file, "a") as f:
                    f.write(_json_line(record))
                summary.last_losses = {k: v for k, v in record.items() if k.startswith("loss") or k == "total_loss"}
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in record.items()
                                 if k.startswith("loss")} | {"lr": f"{record['lr']:.2g}"}, refresh=False)
                bar.update(1)
                done = self.iteration >= self.solver.max_iter
                period = self.solver.checkpoint_period
                if done or (period > 0 and self.iteration % period == 0):
                    summary.checkpoints.append(str(self.save(self.iteration)))
                periodic = self.eval_period > 0 and self.iteration % self.eval_period == 0
                if self.evaluate is not None and (done or periodic):
                    metrics = self.evaluate(self.model, self.iteration)
                    atomic_write_json(metrics, self.output_dir / f"metrics_iter{self.iteration:07d}.json", indent=1)
                    self.model.train()
        finally:
            bar.close()
            summary.end_iter = self.iteration
            summary.seconds = time.perf_counter() - start
        return summary


def _as_is(batch: Any) -> Any:
    return batch  # already collated; the default would turn polygon arrays into tensors


def _json_line(record: dict[str, Any]) -> str:
    import json

    return json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}) + "\n"
