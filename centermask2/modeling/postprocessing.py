"""Detection post-processing: boxes back to the original image, masks pasted full size.

Pure functions reproducing detectron2's CPU inference path bit for bit:
``detectron2/layers/mask_ops.py::paste_masks_in_image`` and
``detectron2/modeling/postprocessing.py::detector_postprocess``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["paste_masks_in_image", "detector_postprocess"]

logger = logging.getLogger(__name__)


def _paste_one_mask(
    mask: torch.Tensor, box: torch.Tensor, img_h: int, img_w: int
) -> tuple[torch.Tensor, tuple[slice, slice]] | None:
    """Sample one M x M mask over the pixels its box touches (detectron2's ``skip_empty`` path).

    Each image pixel (x, y) is sampled at its centre (x + 0.5, y + 0.5), mapped to [-1, 1]
    across the box and read from the mask with ``grid_sample(align_corners=False)``, zeros
    outside. Only the window ``[floor(x0) - 1, ceil(x1) + 1) x [floor(y0) - 1, ceil(y1) + 1)``
    clipped to the image is sampled; everything else is 0 anyway.

    Args:
        mask: Tensor[M, M] floating point probabilities.
        box: Tensor[4] (x0, y0, x1, y1) in image pixels.
        img_h, img_w: image size.

    Returns:
        (Tensor[h', w'] probabilities, (row slice, column slice) of the window), or None when
        the window is empty (box entirely outside the image).
    """
    x0_int, y0_int = (int(v) for v in torch.clamp(box.floor()[:2] - 1, min=0).to(torch.int32))
    x1_int = int(torch.clamp(box[2].ceil() + 1, max=img_w).to(torch.int32))
    y1_int = int(torch.clamp(box[3].ceil() + 1, max=img_h).to(torch.int32))
    if x1_int <= x0_int or y1_int <= y0_int:
        return None
    x0, y0, x1, y1 = torch.split(box[None, :], 1, dim=1)  # each [1, 1]
    img_y = torch.arange(y0_int, y1_int, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, dtype=torch.float32) + 0.5
    # Same op order as detectron2 so that float32 rounding matches.
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # [1, h']
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1  # [1, w']
    gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)  # [1, h', w', 2]
    sampled = F.grid_sample(mask[None, None], grid.to(mask.dtype), align_corners=False)
    return sampled[0, 0], (slice(y0_int, y1_int), slice(x0_int, x1_int))


def paste_masks_in_image(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_shape: tuple[int, int],
    threshold: float = 0.5,
) -> torch.Tensor:
    """Paste fixed-resolution mask probabilities into full-size binary image masks.

    Reproduces detectron2's ``paste_masks_in_image`` on CPU (one mask at a time, sampling only
    the window around each box, pixel-centre sample grid, bilinear ``grid_sample`` with
    ``align_corners=False`` and zero padding, then ``prob >= threshold``).

    Args:
        masks: Tensor[N, M, M] probabilities in [0, 1] (integer masks are cast to float32).
        boxes: Tensor[N, 4] (x0, y0, x1, y1) in pixels of the output image.
        image_shape: (H, W) of the output image.
        threshold: binarization threshold. A negative value returns the soft masks as
            uint8 ``(prob * 255)`` instead, as detectron2 does for visualization.

    Returns:
        Tensor[N, H, W] bool (uint8 if ``threshold < 0``). N == 0 gives an empty [0, H, W].
    """
    masks = torch.as_tensor(masks)
    boxes = torch.as_tensor(boxes)
    if masks.dim() != 3 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must be Tensor[N, M, M] (square), got shape {tuple(masks.shape)}.")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(
            f"boxes must be Tensor[N, 4] with N = {masks.shape[0]} (one per mask), got {tuple(boxes.shape)}."
        )
    img_h, img_w = (int(v) for v in image_shape)
    out_dtype = torch.bool if threshold >= 0 else torch.uint8
    num = masks.shape[0]
    img_masks = torch.zeros((num, img_h, img_w), dtype=out_dtype)
    if num == 0:
        return img_masks
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    masks = masks.cpu()
    boxes = boxes.cpu()
    for i in range(num):
        pasted = _paste_one_mask(masks[i], boxes[i], img_h, img_w)
        if pasted is None:
            continue
        probs, (rows, cols) = pasted
        if threshold >= 0:
            img_masks[i, rows, cols] = probs >= threshold
        else:
            img_masks[i, rows, cols] = (probs * 255).to(torch.uint8)
    return img_masks


def detector_postprocess(
    boxes: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    classes: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray | None,
    mask_scores: torch.Tensor | np.ndarray | None,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int],
    mask_threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Map raw detections of a resized image back to the original image (detectron2 order).

    As ``detector_postprocess``: boxes are scaled by ``output / input`` per axis, clipped to
    the output image, detections whose clipped box has zero width or height are dropped
    (``Boxes.nonempty``), and only then are the masks pasted with the scaled, clipped boxes.

    Args:
        boxes: Tensor[N, 4] (x0, y0, x1, y1) in the resized, unpadded input image.
        scores: Tensor[N] box scores.
        classes: Tensor[N] 0-based contiguous class ids.
        masks: Tensor[N, M, M] (or [N, 1, M, M]) mask probabilities of the predicted class,
            or None for a box-only result.
        mask_scores: Tensor[N] (box score x predicted mask IoU), or None.
        input_hw: (h, w) of the resized image the network saw, without padding.
        output_hw: (H, W) of the original image.
        mask_threshold: binarization threshold for the pasted masks.

    Returns:
        dict with ``boxes`` Tensor[K, 4] float32 xyxy in original pixels, ``scores`` [K],
        ``classes`` [K] int64 and, when given, ``masks`` [K, H, W] bool and ``mask_scores`` [K].
    """
    boxes = torch.as_tensor(boxes).clone()
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}.")
    if not torch.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite values; the raw model outputs are corrupt.")
    num = boxes.shape[0]
    fields: dict[str, torch.Tensor] = {
        "scores": torch.as_tensor(scores),
        "classes": torch.as_tensor(classes).to(torch.int64),
    }
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        fields["masks"] = masks
    if mask_scores is not None:
        fields["mask_scores"] = torch.as_tensor(mask_scores)
    for name, value in fields.items():
        if value.shape[0] != num:
            raise ValueError(f"{name} has {value.shape[0]} entries but boxes has {num}; they must match.")

    in_h, in_w = (int(v) for v in input_hw)
    out_h, out_w = (int(v) for v in output_hw)
    if min(in_h, in_w, out_h, out_w) <= 0:
        raise ValueError(f"Image sizes must be positive, got input_hw={input_hw}, output_hw={output_hw}.")
    scale_x, scale_y = out_w / in_w, out_h / in_h
    # In-place multiply by a Python float, as Boxes.scale: keeps detectron2's float32 rounding.
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=out_w),
            boxes[:, 1].clamp(min=0, max=out_h),
            boxes[:, 2].clamp(min=0, max=out_w),
            boxes[:, 3].clamp(min=0, max=out_h),
        ),
        dim=-1,
    )
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    if not bool(keep.all()):
        logger.debug("Dropping %d detection(s) whose box is empty after clipping.", int((~keep).sum()))

    result: dict[str, torch.Tensor] = {"boxes": boxes[keep]}
    for name in ("scores", "classes"):
        result[name] = fields[name][keep]
    if "masks" in fields:
        result["masks"] = paste_masks_in_image(
            fields["masks"][keep], result["boxes"], (out_h, out_w), threshold=mask_threshold
        )
    if "mask_scores" in fields:
        result["mask_scores"] = fields["mask_scores"][keep]
    return result
