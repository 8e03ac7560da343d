"""tools/train_net.py and the solver: schedule, parameter groups, a short training on the bundled
sample, and an interrupted run resumed to the same iteration, learning rate, losses and weights."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from centermask2.cli import train
from centermask2.config import load_config
from centermask2.engine.trainer import SolverSettings, build_optimizer, latest_checkpoint, lr_factor
from centermask2.modeling import build_model
from golden import CONFIGS, LITE, ROOT, case_info, root_script

SAMPLE = ROOT / "tools" / "sample"
LITE_CONFIG = CONFIGS / case_info(LITE)["config"]

#: a run small enough for the suite: the two bundled images (RLE masks) at ~128 pixels
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "SEED", "3",
    "INPUT.MIN_SIZE_TRAIN", "(112, 128)", "INPUT.MAX_SIZE_TRAIN", "200",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.002", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(3,)", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
]


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--config-file", str(LITE_CONFIG), "--coco-json", str(SAMPLE / "annotations_gt.json"),
            "--images", str(SAMPLE / "images"), "--output-dir", str(out), "--no-progress", *extra, *TINY]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_is_warmup_multistep():
    s = SolverSettings(base_lr=0.02, steps=(10, 20), gamma=0.1, warmup_iters=5, warmup_factor=0.001, max_iter=30)
    assert lr_factor(0, s) == pytest.approx(0.001)
    assert lr_factor(2, s) == pytest.approx(0.001 * 0.6 + 0.4)
    assert lr_factor(5, s) == 1.0
    assert lr_factor(9, s) == 1.0
    assert lr_factor(10, s) == pytest.approx(0.1)
    assert lr_factor(25, s) == pytest.approx(0.01)
    constant = SolverSettings(warmup_iters=5, warmup_factor=0.25, warmup_method="constant", steps=(), max_iter=9)
    assert lr_factor(4, constant) == 0.25 and lr_factor(5, constant) == 1.0


def test_solver_reads_upstream_keys_and_refuses_bad_ones():
    cfg = load_config(LITE_CONFIG, ["SOLVER.STEPS", "(100, 200)", "SOLVER.MAX_ITER", "150"])
    s = SolverSettings.from_config(cfg)
    assert (s.ims_per_batch, s.base_lr, s.max_iter, s.steps) == (16, 0.01, 150, (100,))
    with pytest.raises(ValueError, match="STEPS must be increasing"):
        SolverSettings(steps=(5, 3))
    with pytest.raises(ValueError, match="WarmupMultiStepLR"):
        SolverSettings.from_config(load_config(LITE_CONFIG, ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"]))


def test_optimizer_groups_follow_detectron2():
    model = build_model(load_config(LITE_CONFIG, ["MODEL.VOVNET.NORM", "BN"]))
    s = SolverSettings(base_lr=0.01, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0, max_iter=1)
    opt = build_optimizer(model, s)
    by_param = {id(g["params"][0]): g for g in opt.param_groups}
    names = dict(model.named_parameters())
    norm = by_param[id(names["backbone.bottom_up.stem.stem_1/norm.weight"])]
    bias = by_param[id(names["proposal_generator.fcos_head.cls_logits.bias"])]
    conv = by_param[id(names["proposal_generator.fcos_head.cls_logits.weight"])]
    assert (norm["lr"], norm["weight_decay"]) == (0.01, 0.0)
    assert (bias["lr"], bias["weight_decay"]) == (0.02, 1e-4)
    assert (conv["lr"], conv["weight_decay"]) == (0.01, 1e-4)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_initial_weights_follow_upstream():
    model = build_model(load_config(LITE_CONFIG, []))
    head = model.proposal_generator.fcos_head
    prior = torch.sigmoid(head.cls_logits.bias)
    assert torch.allclose(prior, torch.full_like(prior, 0.01))
    assert head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert model.roi_heads.mask_head.predictor.weight.std().item() == pytest.approx(0.001, rel=0.2)


#: tools/train_net.py with the fourth solver step held until the process is killed: the run is
#: killed after its first checkpoint (iteration 2) and after iteration 3's metrics line, every time
_HELD_RUN = """
import runpy, sys, time
from pathlib import Path
root, marker, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
sys.path.insert(0, str(root))
from centermask2.engine import trainer
step = trainer.Trainer.step
def held(self, iteration, batch):
    if iteration == 3:
        marker.write_text("held")
        time.sleep(900)
    return step(self, iteration, batch)
trainer.Trainer.step = held
script = str(root / "tools" / "train_net.py")
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def test_interrupted_training_resumes_to_the_same_run(tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and continued with --resume reaches the
    same iteration, learning rates, losses and weights as a run that was never stopped."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert train.main(_argv(whole, "--num-workers", "0")) == 0
    want = _metrics(whole)
    assert [r["iteration"] for r in want] == [1, 2, 3, 4]
    assert all(math.isfinite(r["total_loss"]) for r in want)
    assert want[-1]["lr"] == pytest.approx(0.002 * 0.1)  # past the step at 3
    assert latest_checkpoint(whole).name == "model_final.pth"

    held, log = tmp_path / "held", tmp_path / "broken.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _HELD_RUN, str(ROOT), str(held), *_argv(broken, "--num-workers", "1")],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while not held.exists():
            assert proc.poll() is None, f"the run ended before its fourth step:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert latest_checkpoint(broken).name == "model_0000001.pth"
    assert [r["iteration"] for r in _metrics(broken)] == [1, 2, 3]  # iteration 3 is redone on resume

    assert train.main(_argv(broken, "--resume", "--num-workers", "0")) == 0
    got = _metrics(broken)
    assert [r["iteration"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a.keys() - {"seconds"}:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["iteration"], key)
    final_a = torch.load(whole / "model_final.pth", weights_only=True)
    final_b = torch.load(broken / "model_final.pth", weights_only=True)
    assert final_a["iteration"] == final_b["iteration"] == 4
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)

    # the final checkpoint is one our safe loader (and so tester.py) reads
    from centermask2.checkpoint import load_weights

    model = build_model(load_config(LITE_CONFIG, []))
    assert load_weights(model, whole / "model_final.pth").is_complete
    # and so is its stripped, float16 form
    strip = root_script("tools/strip_checkpoint.py")
    assert strip.main([str(whole / "model_final.pth"), str(tmp_path / "small.pth"), "--half"]) == 0
    small = torch.load(tmp_path / "small.pth", weights_only=True)
    assert set(small) == {"model", "iteration", "seed"} and small["iteration"] == 4
    assert (tmp_path / "small.pth").stat().st_size < 0.3 * (whole / "model_final.pth").stat().st_size
    half = build_model(load_config(LITE_CONFIG, []))
    assert load_weights(half, tmp_path / "small.pth").is_complete
    for (key, a), b in zip(model.state_dict().items(), half.state_dict().values()):
        assert a.dtype == b.dtype, key
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=key)
    # resuming a finished run does nothing
    assert train.main(_argv(whole, "--resume")) == 0
    assert len(_metrics(whole)) == 4


def test_starting_weights_with_other_classes_and_backbone_only(tmp_path, caplog):
    """An official checkpoint fine-tuned to fewer classes keeps everything but the class-sized
    tensors; a backbone-only file lands in backbone.bottom_up."""
    source = build_model(load_config(LITE_CONFIG, []))
    full = tmp_path / "full.pth"
    torch.save({"model": source.state_dict()}, full)
    target = build_model(load_config(LITE_CONFIG, ["MODEL.FCOS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES", "3"]))
    train.load_initial_weights(target, str(full))
    ts, ss = target.state_dict(), source.state_dict()
    assert torch.equal(ts["backbone.fpn_lateral3.weight"], ss["backbone.fpn_lateral3.weight"])
    assert ts["proposal_generator.fcos_head.cls_logits.weight"].shape[0] == 3
    assert "shape mismatches" in caplog.text

    backbone = tmp_path / "backbone.pth"
    torch.save({k.removeprefix("backbone.bottom_up."): v for k, v in ss.items() if k.startswith("backbone.bottom_up.")},
               backbone)
    fresh = build_model(load_config(LITE_CONFIG, []))
    train.load_initial_weights(fresh, str(backbone))
    key = "backbone.bottom_up.stem.stem_1/conv.weight"
    assert torch.equal(fresh.state_dict()[key], ss[key])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["MODEL.FCOS.NUM_CLASSES", "3"], "set both to 80"),
        (["SOLVER.STEPS", "(3, 2)"], "SOLVER.STEPS = (3, 2) is out of range"),
        (["INPUT.RANDOM_FLIP", "diagonal"], "RANDOM_FLIP"),
    ],
)
def test_bad_settings_are_named(tmp_path, caplog, extra, message):
    assert train.main(_argv(tmp_path / "out") + extra) == 2
    assert message in caplog.text


def test_bad_arguments_are_named(tmp_path, caplog):
    out = tmp_path / "out"
    assert train.main(["--config-file", str(LITE_CONFIG), "--output-dir", str(out)]) == 2
    assert "--coco-json ANN.json --images DIR" in caplog.text
    assert train.main(_argv(out, "--eval-json", str(SAMPLE / "annotations_gt.json"))) == 2
    assert "--eval-json and --eval-images go together" in caplog.text
    out.mkdir()
    (out / "model_0000001.pth").write_bytes(b"not a checkpoint")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    assert train.main(_argv(out, "--resume")) == 2
    assert "cannot resume from" in caplog.text


def test_shapes_dataset_is_deterministic_and_loadable(tmp_path):
    from centermask2.data.shapes import CLASSES, make_dataset
    from centermask2.data.training import load_training_annotations

    for name in ("a", "b"):
        files = make_dataset(tmp_path / name, train=4, val=2, progress=False)
        assert files == {split: tmp_path / name / split / "annotations.json" for split in ("train", "val")}
    for split in ("train", "val"):
        a = json.loads((tmp_path / "a" / split / "annotations.json").read_text())
        assert a == json.loads((tmp_path / "b" / split / "annotations.json").read_text())
        for im in a["images"]:
            assert (tmp_path / "a" / split / "images" / im["file_name"]).read_bytes() == \
                (tmp_path / "b" / split / "images" / im["file_name"]).read_bytes()
    images, ids, names = load_training_annotations(tmp_path / "a" / "train" / "annotations.json",
                                                   tmp_path / "a" / "train" / "images")
    assert names == list(CLASSES) and ids == [1, 2, 3, 4, 5]
    train_json = json.loads((tmp_path / "a" / "train" / "annotations.json").read_text())
    assert len(images) == 4 and sum(len(im.instances) for im in images) == len(train_json["annotations"])
    boxes = np.array([inst.box for im in images for inst in im.instances])
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_last_checkpoint_resolves_inside_the_output_folder(tmp_path):
    """``last_checkpoint`` holds a file name training wrote; a path elsewhere, a link or a missing file is
    refused by name instead of followed."""
    out = tmp_path / "out"
    out.mkdir()
    assert latest_checkpoint(out) is None
    (tmp_path / "elsewhere.pth").write_bytes(b"x")
    (out / "model_0000001.pth").write_bytes(b"x")
    for content, message in ((str(tmp_path / "elsewhere.pth"), "which is not a file in the output folder"),
                             ("../elsewhere.pth", "which is not a file in the output folder"),
                             ("model_0000009.pth", "which is not a checkpoint file in"),
                             ("x" * 5000, "is larger than a training progress file can be")):
        (out / "last_checkpoint").write_text(content)
        with pytest.raises(ValueError, match=message):
            latest_checkpoint(out)
    (out / "last_checkpoint").write_text("model_0000001.pth\n")
    assert latest_checkpoint(out) == out / "model_0000001.pth"
    (out / "linked.pth").symlink_to(tmp_path / "elsewhere.pth")
    (out / "last_checkpoint").write_text("linked.pth")
    with pytest.raises(ValueError, match="which is not a checkpoint file in"):
        latest_checkpoint(out)
