"""Semantic segmentation evaluation, as detectron2's ``SemSegEvaluator``, and the semantic PNGs it uses.

Conventions (detectron2's ``coco_panoptic_separated``): labels are contiguous stuff classes
0..C-1 (0 = "things", 1-53 the COCO stuff classes), ground truth marks void with the ignore label
255. The confusion matrix is ``[C + 1, C + 1]`` with rows = prediction and columns = ground truth;
void ground truth lands in the extra column and is left out of every metric:

* ``IoU-<name>`` = tp / (gt + pred - tp), ``ACC-<name>`` = tp / gt, for classes present in the
  ground truth (else None, detectron2's NaN);
* ``mIoU``, ``mACC``: their means over those classes; ``fwIoU``: IoU weighted by the ground-truth
  pixel share; ``pACC``: correct pixels / labelled pixels. All in percent.

Boundary IoU (detectron2 computes it when OpenCV is importable) is not reported.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.panoptic_categories import IGNORE_LABEL, coco_panoptic_separated
from ..errors import InputError, MissingFileError
from ..fileio import atomic_write_bytes, path_inside
from .coco import format_table

__all__ = [
    "sem_seg_labels",
    "write_sem_seg_png",
    "read_sem_seg_png",
    "confusion_matrix",
    "sem_seg_metrics",
    "SemSegEvaluator",
    "evaluate_sem_seg",
]

logger = logging.getLogger(__name__)


def sem_seg_labels(sem_seg: np.ndarray, num_classes: int) -> np.ndarray:
    """A semantic prediction as per-pixel labels.

    Args:
        sem_seg: [H, W] integer labels, or [C, H, W] scores (argmax over C, first maximum on ties,
            as ``torch.argmax``); a CPU tensor works too.
        num_classes: C.

    Returns:
        uint8 [H, W], values 0..C-1.

    Raises:
        InputError: another shape, C != ``num_classes``, or labels outside 0..C-1.
    """
    array = np.asarray(sem_seg)
    if array.ndim == 3:
        if array.shape[0] != num_classes:
            raise InputError(f"sem_seg scores have {array.shape[0]} classes, expected {num_classes}: [C, H, W]")
        array = array.argmax(axis=0)
    elif array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"sem_seg must be [H, W] integer labels or [C, H, W] scores, got {array.dtype} {list(array.shape)}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= num_classes):
        raise InputError(f"sem_seg labels must be 0..{num_classes - 1}, found {int(array.min())}..{int(array.max())}")
    if num_classes > 256:
        raise InputError(f"{num_classes} classes do not fit a uint8 PNG")
    return array.astype(np.uint8)


def write_sem_seg_png(labels: np.ndarray, path: str | os.PathLike) -> None:
    """Write uint8 [H, W] labels as an 8-bit grayscale PNG, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise InputError(f"semantic labels must be uint8 [H, W], got {labels.dtype} {list(labels.shape)}")
    with io.BytesIO() as buf:
        Image.fromarray(labels).save(buf, format="PNG")
        atomic_write_bytes(buf.getvalue(), path)


def open_png(path: Path, what: str, hint: str = "") -> Image.Image:
    """Open (not decode) a PNG an evaluation reads.

    Raises:
        MissingFileError: no such file; InputError: not an image PIL can open (the message names
            ``what``, the file and ``hint``).
    """
    tail = f"; {hint}" if hint else ""
    try:
        return Image.open(path)
    except FileNotFoundError as exc:
        raise MissingFileError(f"{what} {str(path)!r} not found{tail}") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read {what} {str(path)!r}: {exc}{tail}") from exc


def read_sem_seg_png(
    path: str | os.PathLike,
    num_classes: int,
    expected_hw: tuple[int, int] | None = None,
    *,
    ignore_label: int | None = IGNORE_LABEL,
    what: str = "semantic ground truth PNG",
    expected_what: str = "the image",
    hint: str = "",
) -> np.ndarray:
    """Read an 8-bit label PNG, checking its size before decoding and its values after.

    Args:
        path: the PNG (mode L, or P whose palette indices are the labels).
        num_classes: labels must be 0..num_classes-1 ...
        expected_hw: (height, width) it must have.
        ignore_label: ... or this value (None: no void, e.g. for predictions).
        what, expected_what, hint: for messages.

    Returns:
        uint8 [H, W].

    Raises:
        MissingFileError: no such file.
        InputError: unreadable, not an 8-bit label PNG, another size, or a label out of range.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    with open_png(path, what, hint) as image:
        width, height = image.size
        if image.format != "PNG" or image.mode not in ("L", "P"):
            raise InputError(
                f"{what} {str(path)!r} is a {image.format} image of mode {image.mode!r}; expected an 8-bit "
                f"(mode 'L') PNG of class labels{tail}"
            )
        if expected_hw is not None and (height, width) != tuple(expected_hw):
            raise InputError(
                f"{what} {str(path)!r} is {width}x{height} (width x height) but {expected_what} is "
                f"{expected_hw[1]}x{expected_hw[0]} (width x height){tail}"
            )
        try:
            labels = np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot decode {what} {str(path)!r}: {exc}{tail}") from None
    counts = np.bincount(labels.ravel(), minlength=256)
    allowed = np.zeros(256, bool)
    allowed[:num_classes] = True
    if ignore_label is not None:
        allowed[ignore_label] = True
    bad = np.flatnonzero((counts > 0) & ~allowed)
    if bad.size:
        valid = f"0..{num_classes - 1}" + (f" and {ignore_label} (void)" if ignore_label is not None else "")
        raise InputError(
            f"{what} {str(path)!r} has label(s) {bad.tolist()[:10]} outside {valid}; it does not hold the "
            f"{num_classes} classes expected{tail}"
        )
    return labels


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Pixel counts of (prediction, ground truth) label pairs of one image.

    Args:
        pred: integer [H, W], labels 0..C-1.
        gt: integer [H, W], labels 0..C-1 or ``ignore_label``.
        num_classes: C.

    Returns:
        int64 [C + 1, C + 1], rows = prediction, columns = ground truth; column C counts void.

    Raises:
        InputError: different shapes or labels out of range.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InputError(f"prediction {list(pred.shape)} and ground truth {list(gt.shape)} must be the same [H, W]")
    gt = np.where(gt == ignore_label, num_classes, gt).astype(np.int64)
    pred = pred.astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes or gt.min() < 0 or gt.max() > num_classes):
        raise InputError(
            f"labels out of range: prediction {pred.min()}..{pred.max()} (expected 0..{num_classes - 1}), ground truth "
            f"{gt.min()}..{gt.max()} (expected 0..{num_classes - 1} or {ignore_label})"
        )
    size = num_classes + 1
    return np.bincount((size * pred + gt).ravel(), minlength=size * size).reshape(size, size)


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100 * float(value)


def sem_seg_metrics(conf: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    """detectron2's ``SemSegEvaluator.evaluate`` on a confusion matrix.

    Args:
        conf: int [C + 1, C + 1] from :func:`confusion_matrix` (summed over images).
        class_names: the C class names.

    Returns:
        ``mIoU, fwIoU, IoU-<name>..., mACC, pACC, ACC-<name>...`` in percent, in that order;
        None where detectron2 has NaN (a class absent from the ground truth, or no labelled pixel).
    """
    n = len(class_names)
    if conf.shape != (n + 1, n + 1):
        raise InputError(f"confusion matrix {list(conf.shape)} does not fit {n} classes")
    acc = np.full(n, np.nan)
    iou = np.full(n, np.nan)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf[:-1, :-1], axis=0).astype(float)
    pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_weights = pos_gt / np.sum(pos_gt)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = acc_valid & (union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
        fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        pacc = np.sum(tp) / np.sum(pos_gt)
    res: dict[str, float | None] = {"mIoU": _percent(miou), "fwIoU": _percent(fiou)}
    res.update({f"IoU-{name}": _percent(iou[i]) for i, name in enumerate(class_names)})
    res.update({"mACC": _percent(macc), "pACC": _percent(pacc)})
    res.update({f"ACC-{name}": _percent(acc[i]) for i, name in enumerate(class_names)})
    return res


class SemSegEvaluator:
    """Accumulates the confusion matrix image by image (detectron2's ``SemSegEvaluator``)."""

    def __init__(self, class_names: Sequence[str] | None = None, ignore_label: int = IGNORE_LABEL) -> None:
        """``class_names``: the contiguous classes; default COCO panoptic's 54 (``"things"`` + 53 stuff)."""
        self.class_names = tuple(class_names) if class_names is not None else coco_panoptic_separated().stuff_classes
        self.ignore_label = ignore_label
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reset(self) -> None:
        self.conf = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def process(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` [H, W] labels or [C, H, W] scores, ``gt`` [H, W] labels with void."""
        labels = sem_seg_labels(pred, self.num_classes)
        self.conf += confusion_matrix(labels, gt, self.num_classes, self.ignore_label)

    def evaluate(self) -> dict[str, dict[str, float | None]]:
        """``{"sem_seg": metrics}`` (see :func:`sem_seg_metrics`), also logged as tables."""
        res = sem_seg_metrics(self.conf, self.class_names)
        overall = {k: res[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")}
        logger.info("Semantic segmentation results:\n%s", format_table(list(overall), [list(overall.values())]))
        rows = [[name, res[f"IoU-{name}"], res[f"ACC-{name}"]] for name in self.class_names
                if res[f"IoU-{name}"] is not None or res[f"ACC-{name}"] is not None]
        if rows:
            logger.info("Per-class semantic segmentation:\n%s", format_table(["class", "IoU", "ACC"], rows))
        return {"sem_seg": res}


def evaluate_sem_seg(
    predictions: str | os.PathLike | Mapping[str, np.ndarray],
    gt_root: str | os.PathLike,
    file_names: Iterable[str],
    *,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    class_names: Sequence[str] | None = None,
    ignore_label: int = IGNORE_LABEL,
    progress: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Semantic segmentation metrics of a set of images.

    Args:
        predictions: a folder of uint8 label PNGs (``sem_seg_results/``) or a mapping file name ->
            [H, W] labels / [C, H, W] scores.
        gt_root: folder of ground-truth label PNGs (``panoptic_stuff_val2017/``).
        file_names: the PNG names to evaluate (``<stem>.png``), each in both places.
        image_sizes: optional file name -> (height, width) every PNG must have.
        class_names: contiguous classes (default COCO panoptic's 54).
        ignore_label: the ground truth's void label.
        progress: show a progress bar.

    Returns:
        ``{"sem_seg": ...}`` as :meth:`SemSegEvaluator.evaluate`.

    Raises:
        MissingFileError: a ground-truth or prediction PNG is missing (checked for all first).
        InputError: a PNG of the wrong size or with labels out of range.
    """
    from tqdm import tqdm

    evaluator = SemSegEvaluator(class_names, ignore_label)
    names = list(file_names)
    gt_paths = {name: path_inside(gt_root, name, "semantic ground truth file name") for name in names}
    pred_paths = None
    if not isinstance(predictions, Mapping):
        pred_paths = {name: path_inside(predictions, name, "semantic prediction file name") for name in names}
    for label, paths in (("semantic ground truth", gt_paths), ("semantic prediction", pred_paths or {})):
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise MissingFileError(
                f"{len(missing)} of {len(names)} {label} PNG(s) not found, e.g. {missing[0]!r}"
                + ("; make the ground truth with tools/prepare_panoptic_stuff.py" if "truth" in label else "")
            )
    for name in tqdm(names, unit="img", desc="sem_seg", disable=not progress):
        hw = image_sizes.get(name) if image_sizes else None
        gt = read_sem_seg_png(gt_paths[name], evaluator.num_classes, hw, ignore_label=ignore_label)
        if pred_paths is not None:
            pred = read_sem_seg_png(pred_paths[name], evaluator.num_classes, gt.shape, ignore_label=None,
                                    what="semantic prediction PNG", expected_what="its ground truth")
        else:
            if name not in predictions:
                raise InputError(f"no semantic prediction for {name!r}")
            pred = sem_seg_labels(predictions[name], evaluator.num_classes)
            if pred.shape != gt.shape:
                raise InputError(f"semantic prediction of {name!r} is {list(pred.shape)}, its ground truth {list(gt.shape)}")
        evaluator.process(pred, gt)
    return evaluator.evaluate()
