"""Every official config on every path, in every run: each model config of ``configs/centermask/``
(the ``Base-*`` files aside: 14 instance configs, 3 of them ``_dcn_``, and 6 Panoptic-CenterMask
ones) is built with random weights, exported (dynamic), and run in ONNX Runtime and OpenVINO on a
batch of two small images of different sizes; both must give PyTorch's detections (boxes, scores,
classes, masks, mask scores; ``sem_seg`` for the panoptic models).

What keeps 20 dynamic exports cheap enough for every run (the cost is the export: tracing with
symbolic shapes, tens of CPU-seconds per config; the runtimes take a second or two):

- one trace per export (``centermask2/export/lowering.py``: the exporter's decomposition re-trace
  skipped; each test asserts it was);

- ``--static-padding include``: the padding-invariant graph (``ignore``, the default) is larger
  and slower to export; the golden tests export it for V-39, Lite V-19-slim-dw, V-39-DCN and
  panoptic V-39 and check it against upstream. The smoke covers what differs per config: each
  backbone's and head's operators through the exporter and both runtimes;
- a batch of two small images, in a tensor of another size than the export's sample, and
  ``POST_NMS_TOPK_TEST`` 8 (few detections, each with a 28x28 mask);
- one export per config, shared by ONNX Runtime and OpenVINO;
- the exports run in worker processes: one in the background from the start of the session,
  alongside the other tests, then, as the smoke runs last, as many at a time as there are cores
  (up to 4), while the test process runs the runtimes on the ones already made
  (:class:`SmokeExports`).

Random initial weights detect nothing, so the weights are calibrated first (:func:`_liven`); the
comparison asserts that it has detections, masks and mask scores worth comparing, and
``test_a_broken_export_is_caught`` shows it fails on an export whose mask branch is wrong.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.pool
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from centermask2.config import load_config
from centermask2.engine import open_model
from centermask2.engine.torch_backend import TorchBackend
from centermask2.export import ExportSettings, default_opset, export_onnx
from centermask2.modeling import build_model
from centermask2.modeling.layers import DeformConv2d
from golden import CONFIGS

#: every model config the project ships (new ones join the smoke on their own)
CONFIG_FILES = sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("Base-"))
#: detections per image (the official configs keep 50 or 100)
TOP_K = 8
#: padding mode of the smoke exports (see the module doc)
PADDING = "include"
#: the export's sample input (dynamic: the graph's cost does not depend on it). Not smaller: at
#: 128x128 the last FPN level is 1x1 and the export specializes on it (the graph then fails in ONNX
#: Runtime at other sizes; with the padding ignored, in OpenVINO too)
SAMPLE_SIZE = (256, 320)
#: the cheapest config and panoptic config (for the checks that the comparison can fail)
CHEAPEST = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml"
CHEAPEST_PANOPTIC = "panoptic_centermask_R_50_FPN_ms_3x.yaml"
#: the batch the runtimes run: a padded tensor size the export never saw, two valid sizes
BATCH_SHAPE = (160, 192)
VALID_SIZES = [(160, 192), (128, 150)]

#: tolerances of the comparison with PyTorch (random weights, fp32 on both sides)
BOX_TOL = 0.05  # pixels
SCORE_TOL = 1e-3
MASK_TOL = 1e-2  # mask probabilities
SEM_SEG_TOL = 1e-3  # relative to the largest logit


def _config_kind(name: str) -> str:
    if name.startswith("panoptic_"):
        return "panoptic"
    return "dcn" if "_dcn_" in name else ("lite" if "_lite_" in name else "instance")


def test_every_official_config_is_in_the_smoke():
    """The README's 20 configs: 14 instance (3 with deformable convolutions) and 6 panoptic."""
    kinds = Counter(_config_kind(n) for n in CONFIG_FILES)
    assert len(CONFIG_FILES) == 20, CONFIG_FILES
    assert kinds["panoptic"] == 6 and kinds["dcn"] == 3 and kinds["lite"] == 5 and kinds["instance"] == 6, kinds


# ------------------------------------------------------------------------------------ the models


#: output std the calibration gives the last layers (class logits, logits of the masks and of the
#: semantic head, MaskIoU, deformable offsets in pixels); other layers get 1
_TARGET_STD = {"cls_logits": 3.0, "bbox_pred": 0.25, "mask_head.predictor": 3.0, "maskiou_head.maskiou": 0.3,
               "sem_seg_head.predictor": 2.0, "offset": 1.0}
#: candidates per image above the score threshold after the calibration
_CANDIDATES = 200


@torch.no_grad()
def _liven(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> None:
    """Make random weights detect something, in ways the runtimes could get wrong.

    Random initial weights detect nothing (every class starts at ``PRIOR_PROB`` 0.01, below the
    0.05 threshold), predict flat masks and boxes of size 0, leave deformable offsets at 0 and,
    without normalization in ResNets and in the MaskIoU head, blow activations up by orders of
    magnitude. So, in one pass over ``inputs``, every layer is rescaled so that its output has
    std 1 (the last layers :data:`_TARGET_STD`; the deformable offsets are drawn first), the box
    regression gets a bias for boxes of about two strides, and the class bias is then set so that about
    :data:`_CANDIDATES` per image pass the threshold: scores spread from 0.05 to ~0.7.
    """
    head = model.proposal_generator.fcos_head
    gen = torch.Generator().manual_seed(1)
    head.cls_logits.bias.zero_()  # everything passes the threshold in the calibration pass
    names: dict[int, str] = {}
    done: set[int] = set()
    logits: list[torch.Tensor] = []

    def calibrate(module, args, kwargs, out):
        if module is head.cls_logits and id(module) in done:
            logits.append(out.flatten(1))  # the other levels, already calibrated
        if id(module) in done or not torch.is_tensor(out) or out.numel() < 2:
            return None
        done.add(id(module))
        std = float(out.float().std())
        if not np.isfinite(std) or std == 0.0:
            return None
        target = next((t for key, t in _TARGET_STD.items() if names[id(module)].endswith(key)), 1.0)
        module.weight.mul_(target / std)
        if getattr(module, "bias", None) is not None:
            module.bias.mul_(target / std)
        out = module(*args, **kwargs)  # with the new weights (some convs hold a norm and activation)
        if module is head.cls_logits:
            logits.append(out.flatten(1))
        return out

    def calibration_pass(prefix: str = "") -> None:
        hooks = []
        for name, module in model.named_modules():
            if not name.startswith(prefix) or not isinstance(getattr(module, "weight", None), torch.Tensor):
                continue
            if not isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, DeformConv2d)):
                continue
            if name.endswith("offset") and not prefix:
                module.weight.normal_(0.0, 1.0, generator=gen)
            names[id(module)] = name
            done.discard(id(module))
            hooks.append(module.register_forward_hook(calibrate, with_kwargs=True))
        try:
            TorchBackend(model, padding=PADDING).run(inputs)
        finally:
            for h in hooks:
                h.remove()

    calibration_pass()
    # the _CANDIDATES-th largest logit of each image at the threshold's logit
    kth = torch.cat(logits, dim=1).topk(_CANDIDATES, dim=1).values[:, -1].min()
    threshold = model.proposal_generator.score_thresh
    head.cls_logits.bias.fill_(float(np.log(threshold / (1 - threshold)) - kth))
    head.bbox_pred.bias.fill_(1.0)  # distances of about one stride, +-25%
    # the ROI heads again, on the boxes the model now finds (in the first pass every candidate
    # passed and the boxes had no size, so the pooled features said little about their scale)
    calibration_pass("roi_heads.")


def smoke_model(name: str) -> tuple[torch.nn.Module, object]:
    """The config's model with seeded random weights, livened on :func:`smoke_inputs` (the same
    on every call)."""
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / name, ["MODEL.DEVICE", "cpu", "MODEL.FCOS.POST_NMS_TOPK_TEST", str(TOP_K)])
    model = build_model(cfg).eval()
    _liven(model, smoke_inputs())
    return model, cfg


def smoke_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(VALID_SIZES), 3, *BATCH_SHAPE), dtype=np.uint8)
    return {"images": images, "image_sizes": np.array(VALID_SIZES, dtype=np.int64)}


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def export_smoke(name: str, folder: str) -> tuple[Path, dict[str, np.ndarray], float, float, str]:
    """Export the config's smoke model (dynamic) into ``folder``; return the file, PyTorch's
    outputs on :func:`smoke_inputs`, the seconds it took, wall and CPU (run in a worker process:
    one thread, like the exporter), and what ``centermask2.export.lowering`` logged."""
    start, cpu = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)
    model, cfg = smoke_model(name)
    path = Path(folder) / f"{Path(name).stem}.onnx"
    settings = ExportSettings(input_size=SAMPLE_SIZE, dynamic=True, padding=PADDING, opset=default_opset(model))
    classes = cfg.MODEL.FCOS.NUM_CLASSES
    lowering, messages = logging.getLogger("centermask2.export.lowering"), _Messages()
    level = lowering.level
    lowering.addHandler(messages)
    lowering.setLevel(logging.DEBUG)
    try:
        export_onnx(model, cfg, path, settings, class_names=[f"c{i}" for i in range(classes)],
                    category_ids=list(range(1, classes + 1)))
    finally:
        lowering.removeHandler(messages)
        lowering.setLevel(level)
    reference = TorchBackend(model, padding=PADDING).run(smoke_inputs())
    return path, reference, time.perf_counter() - start, time.process_time() - cpu, "\n".join(messages.lines)


@dataclass
class Smoke:
    name: str
    onnx_path: Path
    reference: dict[str, np.ndarray]  # PyTorch's outputs on smoke_inputs()
    seconds: float  # to build, calibrate, export and run it in PyTorch
    cpu_seconds: float
    lowering: str  # what centermask2.export.lowering logged during the export


def configs_wanted(items: list[pytest.Item]) -> list[str]:
    """The configs the selected tests of this module export, in the order they run."""
    names: list[str] = []
    for item in items:
        if getattr(item, "module", None) is None or item.module.__name__ != __name__:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("name", CHEAPEST if "broken" in item.name else None)
        if name is not None and name not in names:
            names.append(name)
    return names


class SmokeExports:
    """The smoke's exports, made in worker processes (an export is one thread of Python).

    :meth:`start` runs at the end of the session's collection (``tests/conftest.py``): one worker
    exports the configs the selected tests need, one after the other, in the background while
    the other tests run (they leave a core idle much of the time: exporting, reading, starting
    processes). The smoke's own tests run last; when the first of them asks for an export, the
    exports not yet started go to a pool with one worker per core but one (at most 3; the
    background worker is the last), and each test waits for its own. :meth:`close` stops the
    workers, finished or not."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.pools: list[multiprocessing.pool.Pool] = []
        self.pending: list[str] = []  # not started yet
        self.results: dict[str, multiprocessing.pool.AsyncResult] = {}
        self.busy = False  # the background worker is exporting
        self.widened = False
        self.lock = threading.Lock()

    def _submit(self, pool: multiprocessing.pool.Pool, name: str, **callbacks) -> None:
        self.results[name] = pool.apply_async(export_smoke, (name, str(self.folder)), **callbacks)

    def _next(self, _=None) -> None:
        """Start the next pending export in the background worker (when it is free)."""
        with self.lock:
            if _ is not None:
                self.busy = False
            if self.widened or self.busy or not self.pending:
                return
            self.busy = True
            self._submit(self.pools[0], self.pending.pop(0), callback=self._next, error_callback=self._next)

    def start(self, names: list[str]) -> None:
        """Export ``names`` in the background, in this order."""
        with self.lock:
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="centermask2 smoke exports "))
                self.pools.append(multiprocessing.get_context("spawn").Pool(1))
            self.pending += [n for n in names if n not in self.results and n not in self.pending]
        self._next()

    def get(self, name: str) -> Smoke:
        """The config's export (made now if no one asked for it before)."""
        self.start([name])
        with self.lock:
            if not self.widened:
                self.widened = True
                workers = min((os.cpu_count() or 1) - 1, 3)
                if workers > 0 and self.pending:
                    self.pools.append(multiprocessing.get_context("spawn").Pool(min(workers, len(self.pending))))
            if self.pending:
                for n in self.pending:
                    self._submit(self.pools[-1], n)
                self.pending = []
        return Smoke(name, *self.results[name].get())

    def close(self) -> None:
        for pool in self.pools:
            pool.terminate()
            pool.join()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.__init__()


#: the session's smoke exports (started and closed by tests/conftest.py)
EXPORTS = SmokeExports()


@pytest.fixture(scope="module")
def smoke_export():
    """``smoke_export(config) -> Smoke``: the config's export, made once (see :class:`SmokeExports`)."""
    return EXPORTS.get


# ------------------------------------------------------------------------------------ the comparison


class Disagreement(AssertionError):
    pass


def _match(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], i: int) -> list[str]:
    """Problems of image ``i`` of ``got`` against ``ref``: each reference detection must have a
    candidate of the same class with box, score, mask and mask score within tolerance (rows may
    swap where scores tie within the tolerance; a detection may be missing only where its score is
    within the tolerance of the last one kept, where the two runtimes may keep different ones)."""
    n_r, n_c = int(ref["num_detections"][i]), int(got["num_detections"][i])
    problems = []
    if abs(n_r - n_c) > 1:
        problems.append(f"image {i}: {n_c} detections, PyTorch {n_r}")
    last = float(ref["scores"][i, n_r - 1]) if n_r else 0.0
    free = list(range(n_c))
    for r in range(n_r):
        found = None
        for c in free:
            if (got["classes"][i, c] == ref["classes"][i, r]
                    and np.abs(got["boxes"][i, c] - ref["boxes"][i, r]).max() <= BOX_TOL
                    and abs(float(got["scores"][i, c] - ref["scores"][i, r])) <= SCORE_TOL):
                found = c
                break
        if found is None:
            if float(ref["scores"][i, r]) > last + SCORE_TOL:
                problems.append(f"image {i}: detection {r} (class {ref['classes'][i, r]}, score "
                                f"{ref['scores'][i, r]:.4f}, box {np.round(ref['boxes'][i, r], 2).tolist()}) not found")
            continue
        free.remove(found)
        mask_diff = float(np.abs(got["masks"][i, found] - ref["masks"][i, r]).max())
        if mask_diff > MASK_TOL:
            problems.append(f"image {i}: detection {r}: masks differ by {mask_diff:.3g}")
        ms_diff = abs(float(got["mask_scores"][i, found] - ref["mask_scores"][i, r]))
        if ms_diff > SCORE_TOL:
            problems.append(f"image {i}: detection {r}: mask_scores differ by {ms_diff:.3g}")
    for c in free:
        if float(got["scores"][i, c]) > last + SCORE_TOL:
            problems.append(f"image {i}: extra detection {c} (class {got['classes'][i, c]}, score {got['scores'][i, c]:.4f})")
    return problems


def check_same_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], what: str) -> None:
    """Raise :class:`Disagreement` naming each output that differs from PyTorch's beyond tolerance.

    Also checks the premise that makes the comparison worth something: every image has
    detections, masks that are not flat and mask scores that are not all equal."""
    assert set(got) == set(ref), (what, sorted(got), sorted(ref))
    problems = []
    for i in range(len(ref["num_detections"])):
        n = int(ref["num_detections"][i])
        assert n >= 2, f"{what}: PyTorch finds {n} detections in image {i}: the smoke compares nothing"
        assert float(ref["masks"][i, :n].std(axis=(1, 2)).mean()) > 0.05, f"{what}: flat masks in image {i}"
        assert np.ptp(ref["mask_scores"][i, :n]) > 10 * SCORE_TOL, f"{what}: mask scores all alike in image {i}"
        problems += _match(ref, got, i)
    if "sem_seg" in ref:
        a, b = ref["sem_seg"], got["sem_seg"]
        if a.shape != b.shape:
            problems.append(f"sem_seg shape {b.shape}, PyTorch {a.shape}")
        else:
            assert np.ptp(a) > 1.0, f"{what}: flat sem_seg logits"
            diff = float(np.abs(a - b).max())
            if diff > SEM_SEG_TOL * max(1.0, float(np.abs(a).max())):
                problems.append(f"sem_seg logits differ by {diff:.3g} (PyTorch's largest {np.abs(a).max():.3g})")
    if problems:
        raise Disagreement(f"{what} differs from PyTorch:\n  " + "\n  ".join(problems[:20]))


def _run(path: Path, runtime: str, cache: Path) -> dict[str, np.ndarray]:
    options = {"threads": 2} | ({"cache_dir": str(cache)} if runtime == "openvino" else {})
    return open_model(path, runtime=runtime, **options).backend.run(smoke_inputs())


# ------------------------------------------------------------------------------------ the smoke


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_exports_and_runs_like_pytorch(smoke_export, tmp_path, name, runtime):
    smoke = smoke_export(name)
    start, cpu = time.perf_counter(), time.process_time()
    got = _run(smoke.onnx_path, runtime, tmp_path / "cache")
    print(f"{name}: export {smoke.seconds:.1f} s (CPU {smoke.cpu_seconds:.1f} s), {runtime} "
          f"{time.perf_counter() - start:.1f} s (CPU {time.process_time() - cpu:.1f} s)")
    check_same_outputs(smoke.reference, got, f"{name} in {runtime}")
    # the export took one trace: every operator left after the capture has a rewrite in lowering.py
    assert "no decomposition re-trace" in smoke.lowering, f"{name}: exported with the re-trace: {smoke.lowering}"


# ------------------------------------------------------------------------------------ it can fail


def test_comparison_names_each_output_that_differs():
    """Each output moved a little beyond its tolerance is reported, by name."""
    model, _ = smoke_model(CHEAPEST_PANOPTIC)
    ref = TorchBackend(model, padding=PADDING).run(smoke_inputs())
    check_same_outputs(ref, {k: v.copy() for k, v in ref.items()}, "itself")
    cases = {
        "not found": lambda o: o["boxes"].__setitem__((0, 0), o["boxes"][0, 0] + 1.0),
        "masks differ": lambda o: o["masks"].__setitem__((1, 0), o["masks"][1, 0] * 0.9),
        "mask_scores differ": lambda o: o["mask_scores"].__setitem__((0, 1), o["mask_scores"][0, 1] + 0.01),
        "sem_seg logits differ": lambda o: o["sem_seg"].__setitem__((1, 3), o["sem_seg"][1, 3] + 0.1),
        "detections, PyTorch": lambda o: o["num_detections"].__setitem__(0, 0),
    }
    for message, damage in cases.items():
        got = {k: v.copy() for k, v in ref.items()}
        damage(got)
        with pytest.raises(Disagreement, match=message):
            check_same_outputs(ref, got, "damaged")


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_broken_export_is_caught(smoke_export, tmp_path, runtime):
    """The smoke export with RoiAlign sampling the max instead of the average (the mask branch
    broken, the detections intact): both runtimes' results fail the comparison on the masks."""
    smoke = smoke_export(CHEAPEST)
    proto = onnx.load(str(smoke.onnx_path))
    changed = 0
    for node in proto.graph.node:
        if node.op_type == "RoiAlign":
            for attr in node.attribute:
                if attr.name == "mode":
                    attr.s = b"max"
                    changed += 1
            if not any(a.name == "mode" for a in node.attribute):
                node.attribute.append(onnx.helper.make_attribute("mode", "max"))
                changed += 1
    assert changed
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    got = _run(broken, runtime, tmp_path / "cache")
    with pytest.raises(Disagreement, match="masks differ"):
        check_same_outputs(smoke.reference, got, f"broken export in {runtime}")
