"""Non-maximum suppression in plain PyTorch.

Eager reference for the greedy NMS that detectron2 calls through torchvision: boxes are
visited in decreasing score order and a box is dropped when its IoU with an already kept box
of the same class is *greater than* the threshold. IoU uses ``(x2 - x1) * (y2 - y1)`` areas
(no +1), like torchvision, and like torchvision it is computed in float32 for lower-precision
floating boxes (float16 / bfloat16), whose products overflow or lose the overlap for boxes
larger than about 181 x 181 pixels. The class-aware form runs the greedy pass per class on the
original coordinates (torchvision's "vanilla" strategy), so no coordinate offsets perturb
the IoU arithmetic. ONNX expresses the same thing with ``NonMaxSuppression``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["box_iou", "nms", "batched_nms"]


def _upcast(t: Tensor) -> Tensor:
    """float16 / bfloat16 (any float other than float32 / float64) -> float32; others unchanged."""
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        return t.float()
    return t


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU.

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): ``(x1, y1, x2, y2)``.

    Returns:
        Tensor[N, M]: IoU; 0 where the union is empty. float32 for float16 / bfloat16 boxes,
        which are upcast before computing areas (as torchvision's ``_upcast``).
    """
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of one set of boxes.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): higher is better.
        iou_threshold (float): boxes with IoU > threshold with a kept box are dropped.

    Returns:
        Tensor[K] int64: indices of kept boxes, in decreasing score order.
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    suppress = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    n = suppress.shape[0]
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppress[i]
    keep_t = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep_t]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes only suppress boxes with the same ``idxs`` value.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``.
        scores (Tensor[N]).
        idxs (Tensor[N] int64): category (or image * num_classes + category) of each box.
        iou_threshold (float).

    Returns:
        Tensor[K] int64: indices of kept boxes, in decreasing score order.
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for value in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == value).flatten()
        kept = nms(boxes[members], scores[members], iou_threshold)
        keep_mask[members[kept]] = True
    keep = torch.nonzero(keep_mask).flatten()
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]
