"""Helpers for the golden upstream cases in tests/data/golden_<case>/.

The checkpoints are stored as recipes (see :mod:`centermask2.checkpoint.recipe`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util

from centermask2.checkpoint import recipe_arrays as _recipe_arrays
from centermask2.checkpoint import write_checkpoint as _write_checkpoint
from centermask2.config import load_config
from centermask2.contract import OUTPUT_NAMES, ModelMetadata
from centermask2.data import InputSpec
from centermask2.evaluation.matching import match_records
from centermask2.modeling import build_model

DATA = Path(__file__).parent / "data"
CASES = {
    "V_39": DATA / "golden_V_39",
    "lite_V_19_slim_dw": DATA / "golden_lite_V_19_slim_dw",
    "V_39_dcn": DATA / "golden_V_39_dcn",
    "panoptic_V_39": DATA / "golden_panoptic_V_39",
}
CONFIGS = Path(__file__).parent.parent / "configs" / "centermask"


#: the repository root (scripts are run from it)
ROOT = Path(__file__).resolve().parent.parent
#: the small golden case most tests run on
LITE = "lite_V_19_slim_dw"
#: upstream Panoptic-CenterMask's files for the panoptic and semantic evaluation tests
PANOPTIC = DATA / "golden_panoptic_V_39"
PANOPTIC_CASE = "panoptic_V_39"
#: recorded state-dict key/shape listings of the official configs
STATE_DICTS = DATA / "state_dicts"


def case_info(case: str) -> dict:
    return json.loads((CASES[case] / "case.json").read_text())


def recipe_arrays(case: str) -> dict[str, np.ndarray]:
    return _recipe_arrays(CASES[case])


def write_checkpoint(case: str, path: Path, fmt: str = "pth") -> Path:
    """Write the case's weights as a detectron2 .pth or a model-zoo style .pkl."""
    return _write_checkpoint(CASES[case], path, fmt)


def _unmatched_off_the_edge(records: list[dict], matched: set[int], tol: float) -> list[dict]:
    """The unmatched records that are not at a cut-off: a detection whose score is within ``tol``
    of its image's lowest kept score (top-k) or of the score threshold may be swapped for a
    near-tied one by rounding; any other unmatched detection is a real difference."""
    lowest: dict[int, float] = {}
    for r in records:
        lowest[r["image_id"]] = min(lowest.get(r["image_id"], 1.0), float(r["score"]))
    return [r for r in records if id(r) not in matched and abs(r["score"] - lowest[r["image_id"]]) > tol
            and abs(r["score"] - SCORE_THRESHOLD) > tol]


#: FCOS's test score threshold (every golden case's config)
SCORE_THRESHOLD = 0.05


def compare_results(expected: list[dict], actual: list[dict], iou_thr: float = 0.9, score_tol: float = 2e-3) -> dict:
    """Detection-by-detection match (:func:`centermask2.evaluation.matching.match_records`: same
    category, box IoU >= iou_thr, expected detections in decreasing score order, per image);
    statistics over matched pairs; ``unmatched``: detections of either side without a partner
    that are not at a cut-off (:func:`_unmatched_off_the_edge`, within ``score_tol``)."""
    pairs = match_records(expected, actual, iou_thr)
    out = {"expected": len(expected), "actual": len(actual), "matched": len(pairs),
           "recall": len(pairs) / max(len(expected), 1), "precision": len(pairs) / max(len(actual), 1),
           "unmatched": len(_unmatched_off_the_edge(expected, {id(e) for e, _ in pairs}, score_tol))
           + len(_unmatched_off_the_edge(actual, {id(a) for _, a in pairs}, score_tol))}
    if pairs:
        box = [np.abs(np.array(e["bbox"]) - np.array(a["bbox"])).max() for e, a in pairs]
        mious = []
        for e, a in pairs:
            if mask_util.area(e["segmentation"]) == 0 and mask_util.area(a["segmentation"]) == 0:
                mious.append(1.0)
            else:
                mious.append(float(mask_util.iou([a["segmentation"]], [e["segmentation"]], [0])[0][0]))
        out.update(
            box_diff_p99=float(np.percentile(box, 99)),
            box_diff_max=float(np.max(box)),
            score_diff_max=float(max(abs(e["score"] - a["score"]) for e, a in pairs)),
            mask_score_diff_max=float(max(abs(e["mask_score"] - a["mask_score"]) for e, a in pairs)),
            mask_iou_p5=float(np.percentile(mious, 5)),
            mask_iou_min=float(np.min(mious)),
        )
    return out


def _record_fidelity(r: dict) -> None:
    """Append ``r`` with the running test's id to ``$CM2_FIDELITY_LOG`` (JSON lines), when set: the
    measured figures behind the README's fidelity table."""
    import os

    log = os.environ.get("CM2_FIDELITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "?"), **r}) + "\n")


#: What the README's fidelity table promises, per kind of path (its rows name the tier):
#: every detection matched both ways (except near-ties at a score cut-off), and bounds on the
#: matched pairs' largest box difference (px), score and mask-score differences, and the 5th
#: percentile and minimum of their mask IoU.
TIERS = {
    # PyTorch against upstream PyTorch: the same arithmetic, up to the CPU's kernels
    "torch": {"box_diff_max": 0.01, "score_diff_max": 2e-4, "mask_score_diff_max": 2e-4, "mask_iou_p5": 0.99,
              "mask_iou_min": 0.95},
    # another runtime (ONNX Runtime, OpenVINO fp32, the .bin pipeline) against upstream PyTorch
    "runtime": {"box_diff_max": 0.05, "score_diff_max": 1e-3, "mask_score_diff_max": 1e-3, "mask_iou_p5": 0.99,
                "mask_iou_min": 0.9},
}


def assert_results_match(expected: list[dict], actual: list[dict], tier: str = "runtime") -> dict:
    """``actual`` holds ``expected``'s detections within the README's bounds for ``tier``
    (:data:`TIERS`)."""
    bounds = TIERS[tier]
    r = compare_results(expected, actual, score_tol=bounds["score_diff_max"])
    _record_fidelity({"tier": tier, **r})
    assert r["matched"] > 0, f"no detection matched: {r}"
    assert r["unmatched"] == 0, f"{tier} tier: unmatched = {r['unmatched']} detection(s) not at a cut-off: {r}"
    for key, bound in bounds.items():
        ok = (r[key] >= bound) if key.startswith("mask_iou") else (r[key] <= bound)
        assert ok, f"{tier} tier: {key} = {r[key]:.3g} beyond {bound:g}: {r}"
    return r


def export_case(case: str, path: Path, *, simplify: bool = False, **settings) -> Path:
    """Export the case's model with its golden weights to ``path``, with these
    :class:`~centermask2.export.ExportSettings` (``opset`` defaults to the model's own default:
    19 for _dcn_ models) and COCO's class names. Tests get their exports from the session fixture
    ``exported_model`` (tests/conftest.py), which calls this once per set of settings."""
    from centermask2.data.categories import coco_class_names, coco_contiguous_to_dataset_id
    from centermask2.export import ExportSettings, default_opset, export_onnx

    cfg = load_config(CONFIGS / case_info(case)["config"], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in recipe_arrays(case).items()})
    if settings.get("opset") is None:
        settings["opset"] = default_opset(model)
    export_onnx(model, cfg, path, ExportSettings(**settings), class_names=coco_class_names(),
                category_ids=coco_contiguous_to_dataset_id(), simplify=simplify)
    return path


# --- training goldens: tests/data/train_golden/<case>/ (see its README) ---

TRAIN_DATA = Path(__file__).parent / "data" / "train_golden"
TRAIN_CASES = ["lite_V_19_slim_dw", "V_39"]


def train_case(case: str) -> dict:
    return json.loads((TRAIN_DATA / case / "train_case.json").read_text())


def golden_batch(case: str) -> tuple[list[np.ndarray], list[dict]]:
    """The recorded batch: per image the uint8 BGR CHW image and its targets (numpy / torch)."""
    batch = np.load(TRAIN_DATA / case / "batch.npz")
    images, targets = [], []
    for i in range(len(train_case(case)["data"]["images"])):
        coords, lengths, owner = batch[f"{i}_poly_coords"], batch[f"{i}_poly_len"], batch[f"{i}_poly_owner"]
        boxes = torch.from_numpy(batch[f"{i}_gt_boxes"])
        polygons: list[list[np.ndarray]] = [[] for _ in range(boxes.shape[0])]
        start = 0
        for n, k in zip(lengths.tolist(), owner.tolist()):
            polygons[k].append(coords[start : start + n].copy())
            start += n
        images.append(batch[f"{i}_image"])
        targets.append({"boxes": boxes, "classes": torch.from_numpy(batch[f"{i}_gt_classes"]), "polygons": polygons})
    return images, targets


def training_model(case: str, dtype: torch.dtype = torch.float32):
    """The case's model with the source golden's weights, in training mode."""
    info = train_case(case)
    cfg = load_config(CONFIGS / info["config"], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in recipe_arrays(info["source_golden_case"]).items()}
    model.load_state_dict(state, strict=True)
    return model.to(dtype).train()


def golden_inputs(case: str, model) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Normalized, padded batch tensor, image sizes and targets of the recorded batch."""
    images, targets = golden_batch(case)
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    d = model.size_divisibility
    h, w = -(-h // d) * d, -(-w // d) * d
    raw = torch.zeros((len(images), 3, h, w), dtype=torch.uint8)
    for i, im in enumerate(images):
        raw[i, :, : im.shape[1], : im.shape[2]] = torch.from_numpy(im)
    sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in images], dtype=torch.int64)
    return model.normalize(raw, sizes), sizes, targets


# ---------------------------------------------------------------- shared by several test modules

#: metadata of a static 640x960 batch-2 model, for contract and backend tests
META = ModelMetadata(
    config_yaml="MODEL:\n  DEVICE: cpu\n", class_names=["a", "b"], category_ids=[3, 7], pixel_mean=[1.0, 2.0, 3.0],
    pixel_std=[1.0, 1.0, 1.0], input_format="BGR", min_size=600, max_size=1000, size_divisibility=32,
    dynamic=False, input_size=(640, 960), batch_size=2, input_dtype="uint8", max_detections=50,
    output_names=list(OUTPUT_NAMES), version="0.1.0",
)


def golden_model_and_spec(case: str, **overrides):
    """(case info, the case's model with its golden weights, its InputSpec with ``overrides``)."""
    info = case_info(case)
    cfg = load_config(CONFIGS / info["config"], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in recipe_arrays(case).items()})
    spec = InputSpec(min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST,
                     size_divisibility=model.size_divisibility, **overrides)
    return info, model, spec


def root_script(name: str):
    """A script of the repository root (``postprocess_bin_outputs.py``), loaded from its file as a module,
    so that the tests run what users run without the root being on sys.path."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / script), *map(str, args), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def script_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def preprocess_bins(out: Path, images: Path, *args) -> Path:
    script_ok(run_script("preprocess_inputs_to_bin.py", "--images", images, "--output", out, *args))
    return out


def run_bins(model: Path, bins: Path, raw: Path, *args) -> subprocess.CompletedProcess:
    return run_script("tester.py", "--model", model, "--bins", bins, "--output", raw, "--threads", "2", *args)


def check_golden_folder(out: Path, case: str = "lite_V_19_slim_dw") -> None:
    """``out``'s results and metrics are the case's upstream ones."""
    root = CASES[case]
    expected = json.loads((root / "coco_instances_results.json").read_text())
    actual = json.loads((out / "coco_instances_results.json").read_text())
    assert_results_match(expected, actual)
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((root / "metrics_gt.json").read_text())
    for task in ("bbox", "segm"):
        assert abs(got[task]["AP"] - want[task]["AP"]) <= 0.1, (task, got[task]["AP"], want[task]["AP"])


def postprocess_golden(raw: Path, bins: Path, out: Path, *extra, case: str = "lite_V_19_slim_dw") -> subprocess.CompletedProcess:
    ann = CASES[case] / "annotations_gt.json"
    proc = script_ok(run_script("postprocess_bin_outputs.py", "--outputs", raw, "--info", bins / "bin_info.json",
                    "--coco-json", ann, "--output-dir", out, *extra))
    check_golden_folder(out, case)
    return proc


# --- scripts run in the background: exports made by convert_model_into_onnx.py, the demo ---
# (the session fixtures script_export, lite_dynamic, panoptic_dynamic, panoptic_static, demo_full and
# demo_quick in tests/conftest.py)


#: runs a script with every warning raised in a centermask2 module shown, whatever its category
#: (DeprecationWarnings included, which Python hides by default)
SHOW_OUR_WARNINGS = (
    "import runpy, sys, warnings; "
    "warnings.filterwarnings('always', module=r'centermask2(\\.|$)'); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)

#: the forms ``script_export`` makes: the script's arguments for each
SCRIPT_FORMS = {
    "dynamic": ["--dynamic"],
    # 1344x1344 with the padding ignored (the default): upstream's default results
    "static-uint8": ["--input-size", "1344x1344", "--input-dtype", "uint8"],
    "static-float32": ["--input-size", "1344x1344", "--input-dtype", "float32"],
}

#: the demo's modes (``tools/demo.py``), its arguments for each
DEMO_MODES = {"full": [], "quick": ["--quick"]}
#: seconds a background run may take (a hung one fails its tests instead of the session)
RUN_TIMEOUT = 1800


@dataclass(frozen=True)
class ScriptRun:
    path: Path  # what the run made: the .onnx file of an export, the demo's output folder
    output: str  # the script's stdout and stderr
    returncode: int

    @property
    def noise(self) -> list[str]:
        """Lines of the output a user should not see: warnings (ours shown whatever their
        category) and torchvision notices."""
        return [line for line in self.output.splitlines() if "Warning" in line or "torchvision" in line]


def script_model(export: ScriptRun) -> Path:
    """What the run made (an export's file, the demo's folder), once the script said it succeeded
    (for the tests that only use it)."""
    assert export.returncode == 0, export.output
    return export.path


def export_run(case: str, form: str) -> tuple[str, ...]:
    """Key of a background run: ``convert_model_into_onnx.py --verify`` (on the case's first
    image) on the case's golden checkpoint, ``form`` one of :data:`SCRIPT_FORMS`, with our modules'
    warnings shown."""
    assert form in SCRIPT_FORMS, form
    return ("export", case, form)


def demo_run(mode: str) -> tuple[str, ...]:
    """Key of a background run: ``tools/demo.py`` as users run it, ``mode`` one of :data:`DEMO_MODES`."""
    assert mode in DEMO_MODES, mode
    return ("demo", mode)


class BackgroundRuns:
    """Script runs (:func:`export_run`, :func:`demo_run`), each made once per session.

    :meth:`prefetch` (at the end of collection, ``tests/conftest.py``) queues the ones the selected
    tests need; a background thread runs them one after the other, in subprocesses, while the
    tests run. :meth:`get` returns a finished one, waits for a running one, or runs one that has
    not started yet itself. :meth:`close` drops the queue, stops a running script and deletes what
    the runs made."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.made: dict[tuple[str, ...], ScriptRun] = {}
        self.queued: list[tuple[str, ...]] = []
        self.running: set[tuple[str, ...]] = set()
        self.procs: set[subprocess.Popen] = set()
        self.cv = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closed = False
        self.checkpoint_lock = threading.Lock()  # a case's checkpoint is written once, by one thread

    def _checkpoint(self, case: str) -> Path:
        """The case's golden checkpoint, written on first use and shared by its exports."""
        with self.checkpoint_lock:
            path = self.folder / f"{case}.pth"
            if not path.exists():
                write_checkpoint(case, path)
            return path

    def _command(self, key: tuple[str, ...]) -> tuple[list[str], Path]:
        """The run's command line and what it makes (inputs it needs written first)."""
        with self.cv:
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="centermask2 background runs "))
        name = "_".join(key)
        if key[0] == "demo":
            out = self.folder / name
            return [sys.executable, str(ROOT / "tools" / "demo.py"), "--output-dir", str(out), *DEMO_MODES[key[1]]], out
        _, case, form = key
        ckpt = self._checkpoint(case)
        path = self.folder / f"{name}.onnx"
        return [sys.executable, "-c", SHOW_OUR_WARNINGS, str(ROOT / "convert_model_into_onnx.py"),
                "--config-file", str(CONFIGS / case_info(case)["config"]), "--output", str(path),
                *SCRIPT_FORMS[form], "--verify", str(CASES[case] / "images" / "000000000001.png"),
                "MODEL.WEIGHTS", str(ckpt)], path

    def _run(self, key: tuple[str, ...]) -> ScriptRun:
        cmd, path = self._command(key)
        with self.cv:
            if self.closed:
                return ScriptRun(path, "the session ended first", -1)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            self.procs.add(proc)
        try:
            output, _ = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0] + f"\n(killed: still running after {RUN_TIMEOUT} s)"
        with self.cv:
            self.procs.discard(proc)
        return ScriptRun(path, output, proc.returncode)

    def _done(self, key: tuple[str, ...], run: ScriptRun) -> ScriptRun:
        with self.cv:
            self.made[key] = run
            self.running.discard(key)
            self.cv.notify_all()
        return run

    def _background(self) -> None:
        while True:
            with self.cv:
                if self.closed or not self.queued:
                    self.thread = None
                    return
                key = self.queued.pop(0)
                self.running.add(key)
            self._done(key, self._run(key))

    def prefetch(self, keys: list[tuple[str, ...]]) -> None:
        with self.cv:
            self.queued += [k for k in keys if k not in self.made and k not in self.running and k not in self.queued]
            if self.queued and self.thread is None:
                self.thread = threading.Thread(target=self._background, name="background runs", daemon=True)
                self.thread.start()

    def get(self, key: tuple[str, ...]) -> ScriptRun:
        with self.cv:
            if key in self.running:
                self.cv.wait_for(lambda: key in self.made)
            if key in self.made:
                return self.made[key]
            if key in self.queued:
                self.queued.remove(key)
            self.running.add(key)
        return self._done(key, self._run(key))

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.queued.clear()
            for proc in self.procs:
                proc.kill()
            thread = self.thread
        if thread is not None:
            thread.join()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
