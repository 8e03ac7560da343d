"""RoIAlign and NMS against naive, literal implementations of the reference kernels."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from centermask2.export.onnx_ops import translation_table
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


#: (batch, x0, y0, x1, y1) boxes at the edges of RoIAlign's behaviour, for a 13x17 map at scale 1/8
EDGE_ROIS = torch.tensor([
    [0, 10.0, 12.0, 60.0, 40.0],      # inside
    [1, -20.0, -8.0, 30.0, 25.0],     # partly outside top-left
    [1, 100.0, 70.0, 160.0, 130.0],   # partly outside bottom-right
    [0, 5.0, 5.0, 5.0, 5.0],          # zero-size box
    [0, 0.0, 0.0, 136.0, 104.0],      # whole map: several samples per bin
    [1, 50.0, 30.0, 52.5, 33.0],      # tiny box (< 1 feature pixel)
    [0, 200.0, 200.0, 260.0, 230.0],  # completely outside
    [1, 40.0, 40.0, 30.0, 30.0],      # reversed (negative size)
])
#: more boxes below one feature pixel, where ONNX's output_half_pixel clamps the box size
SMALL_ROIS = torch.tensor([
    [0, 3.0, 4.0, 6.5, 5.0],          # < 1 feature pixel
    [1, -4.0, -4.0, 2.0, 3.0],        # < 1 feature pixel, partly outside
    [0, 130.0, 100.0, 139.0, 110.0],  # small, at the bottom-right edge
])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_naive(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 13, 17, generator=g)
    rois = EDGE_ROIS
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


def _big_overlapping_boxes():
    # 400x400 boxes: areas (160000) overflow float16 (max 65504); IoU(0, 1) = 390^2 / (2 * 400^2 - 390^2)
    boxes = torch.tensor([[0.0, 0, 400, 400], [10.0, 10, 410, 410], [600.0, 0, 1000, 400]])
    return boxes, torch.tensor([0.9, 0.8, 0.7])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_box_iou_low_precision_is_computed_in_float32(dtype):
    boxes, _ = _big_overlapping_boxes()
    want = box_iou(boxes, boxes)
    assert want[0, 1] == pytest.approx(390.0**2 / (2 * 400.0**2 - 390.0**2))
    got = box_iou(boxes.to(dtype), boxes.to(dtype))  # coordinates are exact in both dtypes
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_nms_low_precision_large_boxes(dtype):
    boxes, scores = _big_overlapping_boxes()
    low = boxes.to(dtype)
    assert nms(low, scores, 0.5).tolist() == [0, 2]  # the second box is suppressed
    assert nms(low, scores.to(dtype), 0.5).tolist() == [0, 2]
    assert batched_nms(low, scores, torch.zeros(3, dtype=torch.int64), 0.5).tolist() == [0, 2]
    assert batched_nms(low, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]
    for thr in (0.5, 0.9, 0.905, 0.91):  # true IoU 0.9059: the float32 decision near it too
        assert nms(low, scores, thr).tolist() == nms(boxes, scores, thr).tolist(), thr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_box_iou_full_precision_unchanged(dtype):
    boxes, _ = _random_boxes(50, 4)
    b = boxes.to(dtype) * 20  # large boxes too
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.minimum(b[:, None, 2:], b[None, :, 2:]) - torch.maximum(b[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, None] + area[None, :] - inter
    got = box_iou(b, b)
    assert got.dtype == dtype
    assert torch.equal(got, torch.where(union > 0, inter / union, torch.zeros_like(inter)))


def _onnx_roi_align_session(mode, output_size, sampling_ratio, spatial_scale):
    """A one-node ONNX graph: ``RoiAlign`` (opset 16) with the given coordinate transformation."""
    node = helper.make_node(
        "RoiAlign", ["X", "rois", "batch_indices"], ["Y"], coordinate_transformation_mode=mode, mode="avg",
        output_height=output_size, output_width=output_size, sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
    )
    graph = helper.make_graph(
        [node], "roi_align",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "C", "H", "W"]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["K", 4]),
         helper.make_tensor_value_info("batch_indices", TensorProto.INT64, ["K"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["K", "C", output_size, output_size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _roi_align_cases(seed, n_random, extent):
    g = torch.Generator().manual_seed(seed)
    edge = torch.cat((EDGE_ROIS, SMALL_ROIS))
    xy = torch.rand(n_random, 2, generator=g) * (extent + 40) - 20
    wh = torch.rand(n_random, 2, generator=g) * 60
    wh[: n_random // 2] /= 60 / 7  # half of them below one feature pixel at scale 1/8
    batch = torch.randint(0, 2, (n_random, 1), generator=g).float()
    return torch.cat((edge, torch.cat((batch, xy, xy + wh), 1)))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_align_matches_onnx_runtime(aligned, sampling_ratio, output_size):
    """aligned=False is ONNX ``output_half_pixel`` (clamped box size), aligned=True ``half_pixel``."""
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 3, 13, 17, generator=g)
    rois = _roi_align_cases(6, 40, 130)
    mode = "half_pixel" if aligned else "output_half_pixel"
    inputs = {"X": feats.numpy(), "rois": rois[:, 1:].numpy(), "batch_indices": rois[:, 0].long().numpy()}
    got = _onnx_roi_align_session(mode, output_size, sampling_ratio, 1 / 8).run(None, inputs)[0]
    want = roi_align(feats, rois, output_size, 1 / 8, sampling_ratio, aligned).numpy()
    assert np.abs(got - want).max() <= 1e-5
    if not aligned:  # the test tells the two modes apart
        other = _onnx_roi_align_session("half_pixel", output_size, sampling_ratio, 1 / 8).run(None, inputs)[0]
        assert np.abs(other - want).max() > 0.1


class _MultilevelPool(torch.nn.Module):
    def __init__(self, sampling_ratio, aligned):
        super().__init__()
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, p3, p4, p5, rois, levels):
        return torch.ops.centermask2.multilevel_roi_align(
            [p3, p4, p5], rois, levels, 7, [1 / 8, 1 / 16, 1 / 32], self.sampling_ratio, self.aligned
        )


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_roi_align_onnx_lowering(aligned, sampling_ratio):
    """The exporter's lowering of ``centermask2::multilevel_roi_align`` run in ONNX Runtime."""
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(2, 4, 64 // s, 96 // s, generator=g) for s in (1, 2, 4)]
    rois = _roi_align_cases(8, 40, 500)
    levels = torch.randint(0, 3, (rois.shape[0],), generator=g)
    module = _MultilevelPool(sampling_ratio, aligned).eval()
    args = (*feats, rois, levels)
    with torch.no_grad():
        program = torch.onnx.export(module, args, dynamo=True, custom_translation_table=translation_table(),
                                     opset_version=18, external_data=False, verbose=False)
        want = module(*args).numpy()
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {""}
    modes = {a.s.decode() for n in proto.graph.node if n.op_type == "RoiAlign"
             for a in n.attribute if a.name == "coordinate_transformation_mode"}
    assert modes == {"half_pixel" if aligned else "output_half_pixel"}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (a.numpy() for a in args), strict=True)))[0]
    assert got.shape == want.shape == (rois.shape[0], 4, 7, 7)
    assert np.abs(got - want).max() <= 1e-5


class _RegionPool(torch.nn.Module):
    def __init__(self, sampling_ratio, aligned):
        super().__init__()
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, p3, p4, p5, rois, levels, regions):
        return torch.ops.centermask2.multilevel_roi_align(
            [p3, p4, p5], rois, levels, 7, [1 / 8, 1 / 16, 1 / 32], self.sampling_ratio, self.aligned, regions
        )


def _region_pool_case(seed):
    """Maps of two images with regions ending inside the tensor (odd sizes included), garbage
    outside the regions, and boxes crossing every region edge."""
    g = torch.Generator().manual_seed(seed)
    regions = torch.tensor([[[5, 9], [8, 12]], [[3, 5], [4, 6]], [[2, 3], [2, 3]]])  # [L, B, 2]
    feats = []
    for level, s in enumerate((1, 2, 4)):
        f = torch.randn(2, 4, 16 // s, 24 // s, generator=g)
        for b in range(2):
            h, w = regions[level, b].tolist()
            f[b, :, h:, :] = 50 * torch.randn(f[b, :, h:, :].shape, generator=g)
            f[b, :, :, w:] = 50 * torch.randn(f[b, :, :, w:].shape, generator=g)
        feats.append(f)
    rois = _roi_align_cases(seed + 1, 60, 110)
    levels = torch.randint(0, 3, (rois.shape[0],), generator=g)
    return feats, rois, levels, regions


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_roi_align_in_regions(aligned, sampling_ratio):
    """With regions, each box is pooled as if its image's map ended at the region: the eager op
    equals RoIAlign on the cropped map, the values outside the region have no effect, and the
    ONNX lowering (four moved copies of each map, exact per bin) agrees in ONNX Runtime."""
    feats, rois, levels, regions = _region_pool_case(11)
    module = _RegionPool(sampling_ratio, aligned).eval()
    args = (*feats, rois, levels, regions)
    with torch.no_grad():
        want = module(*args)
        for k in range(rois.shape[0]):
            b, lv = int(rois[k, 0]), int(levels[k])
            h, w = regions[lv, b].tolist()
            own = torch.cat((torch.zeros(1), rois[k, 1:]))[None]
            alone = roi_align(feats[lv][b : b + 1, :, :h, :w], own, 7, 1 / 2 ** (3 + lv), sampling_ratio, aligned)
            torch.testing.assert_close(want[k], alone[0], atol=0, rtol=0)
        plain = torch.ops.centermask2.multilevel_roi_align(
            feats, rois, levels, 7, [1 / 8, 1 / 16, 1 / 32], sampling_ratio, aligned
        )
        assert (plain - want).abs().max() > 1.0  # the garbage outside is read without regions
        program = torch.onnx.export(module, args, dynamo=True, custom_translation_table=translation_table(),
                                     opset_version=18, external_data=False, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {""}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (a.numpy() for a in args), strict=True)))[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4


@pytest.mark.parametrize("aligned", [False, True])
def test_multilevel_roi_align_in_regions_batch_of_one(aligned):
    """The batch-1 lowering (plain Gathers, no transposes) is as exact as the batched one."""
    feats, rois, levels, regions = _region_pool_case(12)
    feats = [f[:1] for f in feats]
    rois, levels = rois[rois[:, 0] == 0], levels[rois[:, 0] == 0]
    regions = regions[:, :1]
    module = _RegionPool(0, aligned).eval()
    args = (*feats, rois, levels, regions)
    with torch.no_grad():
        want = module(*args).numpy()
        program = torch.onnx.export(module, args, dynamo=True, custom_translation_table=translation_table(),
                                     opset_version=18, external_data=False, verbose=False)
    proto = program.model_proto
    assert "Transpose" not in {n.op_type for n in proto.graph.node}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (a.numpy() for a in args), strict=True)))[0]
    assert np.abs(got - want).max() <= 1e-4
