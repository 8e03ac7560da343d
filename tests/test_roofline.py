"""centermask2.roofline and the benchmark's precision mapping: the work a model does, the CPU's
peaks, and the share of the floor a latency reaches."""

import pytest
import torch
from torch import nn

from centermask2.benchmark import Target
from centermask2.roofline import Peak, _layer_macs, count_macs, floor_fraction, matmul_peaks


def test_layer_macs_count_products_with_the_weights():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.zeros(1, 3, 32, 32)
    assert _layer_macs(conv, (x,), conv(x)) == 8 * 32 * 32 * 3 * 3 * 3
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: one input channel per output
    y = torch.zeros(1, 8, 16, 16)
    assert _layer_macs(grouped, (y,), grouped(y)) == 8 * 16 * 16 * 9
    linear = nn.Linear(10, 4)
    z = torch.zeros(5, 10)
    assert _layer_macs(linear, (z,), linear(z)) == 5 * 4 * 10
    up = nn.ConvTranspose2d(8, 4, 2, stride=2)
    assert _layer_macs(up, (y,), up(y)) == 8 * 16 * 16 * 4 * 2 * 2
    assert _layer_macs(nn.ReLU(), (y,), y) == 0


def test_count_macs_of_a_model_by_part():
    from centermask2.config import load_config
    from centermask2.modeling import build_model
    from golden import CONFIGS

    model = build_model(load_config(CONFIGS / "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml", ["MODEL.DEVICE", "cpu"]))
    small, large = count_macs(model, 128, 128), count_macs(model, 256, 256)
    assert set(small.by_part) == {"backbone", "proposal_generator", "roi_heads"}
    assert small.total == sum(small.by_part.values()) and small.layers > 50
    # the dense parts grow with the pixels (4x), the ROI heads run on the same rows at any size
    for part in ("backbone", "proposal_generator"):
        assert large.by_part[part] == pytest.approx(4 * small.by_part[part], rel=0.05)
    assert large.by_part["roi_heads"] == small.by_part["roi_heads"]


def test_matmul_peaks_say_what_this_cpu_has():
    peaks = matmul_peaks(threads=1, size=128, runs=1)
    assert peaks["fp32"].gmacs > 0 and peaks["int8"].gmacs > 0
    assert "ONNX Runtime" in peaks["fp32"].rates
    bf16 = peaks["bf16"]
    assert (bf16.gmacs is None) == bool(bf16.note)  # a rate where OpenVINO computes bf16, else the reason


def test_floor_fraction_and_row_precisions():
    peak = Peak("fp32", 100.0)
    assert floor_fraction(2.0, 100 * 10**9, peak) == pytest.approx(0.5)  # floor 1 s, latency 2 s
    assert floor_fraction(2.0, 10**9, Peak("bf16", None, note="none")) is None
    targets = [
        Target("torch", "c.yaml"), Target("onnxruntime", "m.onnx"), Target("onnxruntime", "q.onnx", "int8", float32=False),
        Target("openvino", "m.onnx", "bf16", {"precision": "bf16"}, ran="bf16"),
        Target("openvino", "m.onnx", "bf16 (ran fp32)", {"precision": "bf16"}, ran="fp32"),
        Target("openvino", "q.onnx", "int8, rest bf16", {"precision": "bf16"}, float32=False, ran="bf16"),
        Target("openvino", "m.onnx", "fp32, 2 requests", {"precision": "fp32", "requests": 2}),
        Target("openvino", "m.onnx", "bf16, 2 requests (ran fp32)", {"precision": "bf16", "requests": 2}, ran="fp32"),
    ]
    assert [t.peak_precision for t in targets] == ["fp32", "fp32", "int8", "bf16", "fp32", "int8", "fp32", "fp32"]
