"""Helpers for the upstream training goldens in tests/data/train_golden/<case>/ (see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from centermask2.config import load_config
from centermask2.modeling import build_model
from golden import CONFIGS, recipe_arrays

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
