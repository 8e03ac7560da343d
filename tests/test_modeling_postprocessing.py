"""Tests of centermask2.modeling.postprocessing: mask pasting and detector_postprocess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from centermask2.evaluation import instances_to_coco_json, load_coco_categories
from centermask2.modeling.postprocessing import detector_postprocess, paste_masks_in_image
from golden import CASES, LITE


def naive_paste_probs(mask: np.ndarray, box: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
    """Independent per-pixel reference, float64, over the whole image.

    Pixel (x, y) is sampled at its centre, mapped into the mask's pixel grid
    (align_corners=False: u = ((x + 0.5 - x0) / (x1 - x0)) * M - 0.5) and read bilinearly with
    zeros outside the mask.
    """
    m = mask.shape[0]
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((img_h, img_w), dtype=np.float64)

    def at(r: int, c: int) -> float:
        return float(mask[r, c]) if 0 <= r < m and 0 <= c < m else 0.0

    for y in range(img_h):
        v = (y + 0.5 - y0) / (y1 - y0) * m - 0.5
        for x in range(img_w):
            u = (x + 0.5 - x0) / (x1 - x0) * m - 0.5
            c0, r0 = int(np.floor(u)), int(np.floor(v))
            fu, fv = u - c0, v - r0
            out[y, x] = (
                at(r0, c0) * (1 - fu) * (1 - fv)
                + at(r0, c0 + 1) * fu * (1 - fv)
                + at(r0 + 1, c0) * (1 - fu) * fv
                + at(r0 + 1, c0 + 1) * fu * fv
            )
    return out


def _assert_matches_naive(masks, boxes, img_h, img_w, threshold=0.5, tol=1e-4):
    got = paste_masks_in_image(masks, boxes, (img_h, img_w), threshold=threshold)
    assert got.shape == (len(masks), img_h, img_w) and got.dtype == torch.bool
    for i in range(len(masks)):
        probs = naive_paste_probs(masks[i].numpy(), boxes[i].numpy(), img_h, img_w)
        expected = probs >= threshold
        differ = got[i].numpy() != expected
        # float32 vs float64 may only disagree on pixels sitting on the threshold.
        assert not (differ & (np.abs(probs - threshold) > tol)).any(), f"mask {i}"
    return got


def test_paste_matches_naive_inside_at_borders_and_outside():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 28, 28, generator=gen)
    boxes = torch.tensor(
        [
            [10.3, 5.7, 40.2, 30.9],  # inside
            [0.0, 0.0, 25.0, 18.0],  # touching the top-left border
            [-12.4, -7.5, 20.1, 15.2],  # partly outside top-left
            [45.5, 30.2, 70.0, 52.0],  # partly outside bottom-right (image 48 x 64)
            [3.0, 3.0, 3.4, 3.3],  # tiny, sub-pixel
            [30.0, 10.0, 31.0, 40.0],  # one pixel wide
        ]
    )
    _assert_matches_naive(masks, boxes, 48, 64)


def test_paste_smooth_mask_other_threshold_and_size():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 14), torch.linspace(0, 1, 14), indexing="ij")
    masks = torch.stack([xx * yy, 1 - xx, (xx - 0.5) ** 2 + (yy - 0.5) ** 2])
    boxes = torch.tensor([[2.0, 2.0, 30.0, 20.0], [-5.0, 1.5, 12.5, 22.0], [8.25, -3.0, 33.0, 9.0]])
    _assert_matches_naive(masks, boxes, 24, 32, threshold=0.3)


def test_paste_box_entirely_outside_and_empty_input():
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[100.0, 100.0, 120.0, 130.0], [1.0, 1.0, 5.0, 5.0]])
    out = paste_masks_in_image(masks, boxes, (20, 30))
    assert not out[0].any()
    assert out[1].any()
    empty = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30))
    assert empty.shape == (0, 20, 30) and empty.dtype == torch.bool


def test_paste_full_mask_covers_box_pixels():
    # All-ones mask: a pixel is on when its centre is within half a mask cell of the box.
    out = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([[4.0, 2.0, 12.0, 10.0]]), (16, 16))
    rows = torch.nonzero(out[0].any(dim=1)).flatten()
    cols = torch.nonzero(out[0].any(dim=0)).flatten()
    assert (rows.min().item(), rows.max().item()) == (2, 9)
    assert (cols.min().item(), cols.max().item()) == (4, 11)


def test_paste_soft_output_and_bad_shapes():
    half = torch.full((1, 28, 28), 0.5)
    soft = paste_masks_in_image(half, torch.tensor([[2.0, 2.0, 10.0, 10.0]]), (12, 12), threshold=-1)
    assert soft.dtype == torch.uint8 and soft[0, 5, 5].item() == 127
    with pytest.raises(ValueError, match="square"):
        paste_masks_in_image(torch.zeros(1, 28, 14), torch.zeros(1, 4), (10, 10))
    with pytest.raises(ValueError, match="one per mask"):
        paste_masks_in_image(torch.zeros(2, 28, 28), torch.zeros(1, 4), (10, 10))


# ---------------------------------------------------------------- detector_postprocess


def test_detector_postprocess_scales_clips_drops_then_pastes():
    left_half = torch.zeros(28, 28)
    left_half[:, :14] = 1.0
    masks = torch.stack([left_half, left_half, torch.ones(28, 28)])
    boxes = torch.tensor(
        [
            [-25.0, 5.0, 25.0, 20.0],  # partly outside on the left
            [10.0, 10.0, 30.0, 30.0],
            [60.0, 5.0, 70.0, 9.0],  # entirely right of the image -> empty after clipping
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.tensor([3, 1, 2])
    mask_scores = torch.tensor([0.5, 0.4, 0.3])
    # Resized input 40 x 50 (h, w) -> original 80 x 100: scale 2 on both axes.
    out = detector_postprocess(boxes, scores, classes, masks, mask_scores, (40, 50), (80, 100))

    expected_boxes = torch.tensor([[0.0, 10.0, 50.0, 40.0], [20.0, 20.0, 60.0, 60.0]])
    torch.testing.assert_close(out["boxes"], expected_boxes)
    torch.testing.assert_close(out["scores"], scores[:2])
    torch.testing.assert_close(out["mask_scores"], mask_scores[:2])
    assert out["classes"].dtype == torch.int64 and out["classes"].tolist() == [3, 1]
    assert out["masks"].shape == (2, 80, 100) and out["masks"].dtype == torch.bool
    # Masks are pasted with the scaled *clipped* boxes (detectron2's order).
    torch.testing.assert_close(out["masks"], paste_masks_in_image(masks[:2], expected_boxes, (80, 100)))
    unclipped = paste_masks_in_image(masks[:1], torch.tensor([[-50.0, 10.0, 50.0, 40.0]]), (80, 100))
    assert not torch.equal(out["masks"][:1], unclipped)
    assert boxes[0, 0].item() == -25.0  # inputs are not modified


def test_detector_postprocess_variants():
    boxes = np.array([[1.0, 1.0, 5.0, 5.0]], dtype=np.float32)
    out = detector_postprocess(boxes, np.array([0.5]), np.array([0]), None, None, (10, 10), (20, 30))
    assert set(out) == {"boxes", "scores", "classes"}
    torch.testing.assert_close(out["boxes"], torch.tensor([[3.0, 2.0, 15.0, 10.0]]))
    four_d = detector_postprocess(
        boxes, [0.5], [0], torch.ones(1, 1, 28, 28), [0.2], (10, 10), (20, 30)
    )
    assert four_d["masks"].shape == (1, 20, 30)
    none = detector_postprocess(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 28, 28),
        torch.zeros(0), (10, 10), (20, 30),
    )
    assert none["boxes"].shape == (0, 4) and none["masks"].shape == (0, 20, 30)
    with pytest.raises(ValueError, match="NaN"):
        nan_box = torch.tensor([[0.0, 0.0, float("nan"), 1.0]])
        detector_postprocess(nan_box, [1.0], [0], None, None, (5, 5), (5, 5))
    with pytest.raises(ValueError, match="must match"):
        detector_postprocess(boxes, [0.5, 0.4], [0], None, None, (10, 10), (20, 30))


@pytest.mark.parametrize("case", ["V_39", LITE])
def test_raw_outputs_reproduce_golden_coco_results(case):
    """Golden raw outputs -> detector_postprocess -> instances_to_coco_json == upstream's JSON."""
    raw = np.load(CASES[case] / "raw_outputs.npz")
    ann = json.loads((CASES[case] / "annotations.json").read_text())
    to_dataset_id, _ = load_coco_categories(ann)
    ours = []
    for image in ann["images"]:
        i = int(Path(image["file_name"]).stem)
        result = detector_postprocess(
            raw[f"{i}_boxes"], raw[f"{i}_scores"], raw[f"{i}_classes"], raw[f"{i}_masks"],
            raw[f"{i}_mask_scores"], raw[f"{i}_input"].shape[1:], (image["height"], image["width"]),
        )
        ours += instances_to_coco_json(result, image["id"], to_dataset_id)
    golden = json.loads((CASES[case] / "coco_instances_results.json").read_text())
    assert len(ours) == len(golden)
    # Same records, same key order, same float values, bit-exact RLE masks.
    assert json.dumps(ours) == json.dumps(golden)
