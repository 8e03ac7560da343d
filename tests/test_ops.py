"""RoIAlign and NMS against naive, literal implementations of the reference kernels."""

import math

import numpy as np
import pytest
import torch

from centermask2.modeling.ops.nms import batched_nms, box_iou, nms
from centermask2.modeling.ops.roi_align import roi_align


def _bilinear(feat: np.ndarray, y: float, x: float) -> np.ndarray:
    c, h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(c, np.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= h - 1:
        y_hi = y_lo = h - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= w - 1:
        x_hi = x_lo = w - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feat[:, y_lo, x_lo] + hy * lx * feat[:, y_lo, x_hi]
            + ly * hx * feat[:, y_hi, x_lo] + ly * lx * feat[:, y_hi, x_hi])


def naive_roi_align(feats, rois, out_size, scale, sampling_ratio, aligned):
    feats = feats.double().numpy()
    out = np.zeros((len(rois), feats.shape[1], out_size, out_size))
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out_size, rw / out_size
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out_size)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out_size)
        count = max(gh * gw, 1)
        for ph in range(out_size):
            for pw in range(out_size):
                acc = np.zeros(feats.shape[1])
                for iy in range(gh):
                    y = sy + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + pw * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(feats[int(b)], y, x)
                out[k, :, ph, pw] = acc / count
    return torch.from_numpy(out)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_naive(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 13, 17, generator=g)
    rois = torch.tensor([
        [0, 10.0, 12.0, 60.0, 40.0],      # inside
        [1, -20.0, -8.0, 30.0, 25.0],     # partly outside top-left
        [1, 100.0, 70.0, 160.0, 130.0],   # partly outside bottom-right
        [0, 5.0, 5.0, 5.0, 5.0],          # zero-size box
        [0, 0.0, 0.0, 136.0, 104.0],      # whole map: several samples per bin
        [1, 50.0, 30.0, 52.5, 33.0],      # tiny box
        [0, 200.0, 200.0, 260.0, 230.0],  # completely outside
        [1, 40.0, 40.0, 30.0, 30.0],      # reversed (negative size)
    ])
    got = roi_align(feats, rois, 7, 1 / 8, sampling_ratio, aligned)
    want = naive_roi_align(feats, rois, 7, 1 / 8, sampling_ratio, aligned)
    assert got.shape == (8, 3, 7, 7)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    if aligned and sampling_ratio == 0:
        assert torch.count_nonzero(got[3]) == 0  # zero box: no samples, zeros
    assert torch.count_nonzero(got[6]) == 0  # completely outside the map


def test_roi_align_empty():
    out = roi_align(torch.randn(1, 4, 8, 8), torch.zeros((0, 5)), 14, 0.25, 0, True)
    assert out.shape == (0, 4, 14, 14)


def test_roi_align_constant_map_is_constant():
    # aligned + adaptive sampling on a constant map returns the constant wherever samples are inside
    feats = torch.full((1, 2, 20, 20), 3.0)
    out = roi_align(feats, torch.tensor([[0, 8.0, 8.0, 120.0, 100.0]]), 14, 1 / 8, 0, True)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def naive_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            bi, bj = boxes[i].tolist(), boxes[j].tolist()
            iw = max(0.0, min(bi[2], bj[2]) - max(bi[0], bj[0]))
            ih = max(0.0, min(bi[3], bj[3]) - max(bi[1], bj[1]))
            inter = iw * ih
            union = (bi[2] - bi[0]) * (bi[3] - bi[1]) + (bj[2] - bj[0]) * (bj[3] - bj[1]) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g)


def test_nms_matches_naive():
    boxes, scores = _random_boxes(300, 1)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == naive_nms(boxes, scores, 0.5)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


def test_nms_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 5]])  # IoU exactly 0.5
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


def test_batched_nms_is_class_aware():
    boxes, scores = _random_boxes(200, 2)
    classes = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(3))
    keep = batched_nms(boxes, scores, classes, 0.6)
    want = []
    for c in range(4):
        idx = torch.nonzero(classes == c).flatten()
        want += [int(idx[i]) for i in naive_nms(boxes[idx], scores[idx], 0.6)]
    assert sorted(keep.tolist()) == sorted(want)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])
    assert batched_nms(boxes[:0], scores[:0], classes[:0], 0.5).numel() == 0


def test_box_iou_degenerate():
    b = torch.tensor([[0.0, 0, 0, 0], [0.0, 0, 2, 2]])
    iou = box_iou(b, b)
    assert iou[0, 0] == 0 and iou[1, 1] == 1
