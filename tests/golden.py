"""Helpers for the golden upstream cases in tests/data/golden_<case>/.

The checkpoints are stored as recipes (see :mod:`centermask2.checkpoint.recipe`).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util

from centermask2.checkpoint import recipe_arrays as _recipe_arrays
from centermask2.checkpoint import write_checkpoint as _write_checkpoint
from centermask2.config import load_config
from centermask2.evaluation.matching import match_records
from centermask2.modeling import build_model

DATA = Path(__file__).parent / "data"
CASES = {
    "V_39": DATA / "golden_V_39",
    "lite_V_19_slim_dw": DATA / "golden_lite_V_19_slim_dw",
    "V_39_dcn": DATA / "golden_V_39_dcn",
}
CONFIGS = Path(__file__).parent.parent / "configs" / "centermask"


def case_info(case: str) -> dict:
    return json.loads((CASES[case] / "case.json").read_text())


def recipe_arrays(case: str) -> dict[str, np.ndarray]:
    return _recipe_arrays(CASES[case])


def write_checkpoint(case: str, path: Path, fmt: str = "pth") -> Path:
    """Write the case's weights as a detectron2 .pth or a model-zoo style .pkl."""
    return _write_checkpoint(CASES[case], path, fmt)


def compare_results(expected: list[dict], actual: list[dict], iou_thr: float = 0.9) -> dict:
    """Detection-by-detection match (:func:`centermask2.evaluation.matching.match_records`: same
    category, box IoU >= iou_thr, expected detections in decreasing score order, per image);
    statistics over matched pairs."""
    pairs = match_records(expected, actual, iou_thr)
    out = {"expected": len(expected), "actual": len(actual), "matched": len(pairs),
           "recall": len(pairs) / max(len(expected), 1), "precision": len(pairs) / max(len(actual), 1)}
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


def assert_results_match(expected: list[dict], actual: list[dict]) -> dict:
    """The acceptance thresholds of the reference comparison tool (its defaults)."""
    r = compare_results(expected, actual)
    assert r["matched"] > 0, r
    assert r["recall"] >= 0.95 and r["precision"] >= 0.95, r
    assert r["box_diff_p99"] <= 1.0, r
    assert r["score_diff_max"] <= 2e-3, r
    assert r["mask_iou_p5"] >= 0.9, r
    return r


_EXPORTS: dict[tuple, Path] = {}


def exported_model(case: str, **settings) -> Path:
    """The case's model exported with these :class:`ExportSettings` (plus ``simplify``), once per
    test session: the export and the pipeline tests share the same files (read-only)."""
    import numpy as np
    import torch

    from centermask2.config import load_config
    from centermask2.data.categories import coco_class_names, coco_contiguous_to_dataset_id
    from centermask2.export import ExportSettings, default_opset, export_onnx
    from centermask2.modeling import build_model

    cfg = load_config(CONFIGS / case_info(case)["config"], ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    settings.setdefault("opset", default_opset(model))
    simplify = settings.pop("simplify", False)
    key = (case, simplify, tuple(sorted(settings.items())))
    if key not in _EXPORTS:
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in recipe_arrays(case).items()})
        folder = Path(tempfile.mkdtemp(prefix="centermask2 exports "))  # a path with a space
        atexit.register(shutil.rmtree, folder, True)
        path = folder / f"{case}_{len(_EXPORTS)}.onnx"
        export_onnx(model, cfg, path, ExportSettings(**settings), class_names=coco_class_names(),
                    category_ids=coco_contiguous_to_dataset_id(), simplify=simplify)
        _EXPORTS[key] = path
    return _EXPORTS[key]


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
