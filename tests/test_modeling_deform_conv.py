"""The deformable convolution op: reference against ONNX Runtime's and onnx.reference's DeformConv,
and its ONNX lowering."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from centermask2.errors import InputError
from centermask2.export.onnx import check_opset, default_opset
from centermask2.export.onnx_ops import translation_table
from centermask2.modeling.ops import registry  # noqa: F401  (registers centermask2::deform_conv2d)
from centermask2.modeling.ops.deform_conv import deform_conv2d

# (N, C_in, H, W, C_out, k, stride, pad, dilation, groups, offset_groups, modulated, bias, offset scale)
CASES = [
    (1, 4, 7, 9, 6, 3, 1, 1, 1, 1, 1, True, True, 1.0),
    (2, 8, 10, 8, 4, 3, 2, 1, 2, 2, 2, True, False, 2.0),
    (1, 6, 5, 6, 3, 3, 1, 0, 1, 3, 3, False, False, 1.5),
    (2, 4, 6, 6, 4, 1, 1, 0, 1, 1, 1, True, True, 0.5),
    (1, 4, 8, 8, 8, 3, 1, 1, 1, 1, 2, True, True, 6.0),  # most samples pushed off the map
    (1, 3, 9, 7, 5, 3, 2, 2, 1, 1, 1, False, True, 0.0),  # zero offsets: a plain strided conv
]


def _case(n, c, h, w, co, k, s, p, d, g, og, modulated, bias, scale, seed=0):
    rng = np.random.default_rng(seed)
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((co, c // g, k, k)).astype(np.float32)
    offset = (rng.standard_normal((n, 2 * og * k * k, ho, wo)) * scale).astype(np.float32)
    mask = rng.random((n, og * k * k, ho, wo)).astype(np.float32) if modulated else None
    b = rng.standard_normal(co).astype(np.float32) if bias else None
    attrs = dict(dilations=[d, d], group=g, kernel_shape=[k, k], offset_group=og, pads=[p] * 4, strides=[s, s])
    return x, weight, offset, mask, b, attrs


def _ours(x, weight, offset, mask, b, attrs):
    def t(a):
        return None if a is None else torch.from_numpy(a)

    return deform_conv2d(t(x), t(offset), t(mask), t(weight), t(b), tuple(attrs["strides"]), tuple(attrs["pads"][:2]),
                         tuple(attrs["dilations"]), attrs["group"], attrs["offset_group"]).numpy()


def _onnx_graph(x, weight, offset, mask, b, attrs, elem=TensorProto.FLOAT):
    names = ["X", "W", "offset", "B" if b is not None else "", "mask" if mask is not None else ""]
    inputs = [helper.make_tensor_value_info(nm, elem, list(a.shape))
              for nm, a in zip(names, (x, weight, offset, b, mask)) if nm]
    node = helper.make_node("DeformConv", [nm for nm in names], ["Y"], **attrs)
    while node.input and node.input[-1] == "":
        node.input.pop()
    graph = helper.make_graph([node], "dcn", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    feeds = {nm: a for nm, a in zip(names, (x, weight, offset, b, mask)) if nm}
    return model, feeds


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-s{c[6]}d{c[8]}g{c[9]}og{c[10]}")
def test_reference_matches_onnxruntime_and_onnx_reference(case):
    x, weight, offset, mask, b, attrs = _case(*case)
    ours = _ours(x, weight, offset, mask, b, attrs)
    model, feeds = _onnx_graph(x, weight, offset, mask, b, attrs)
    ort_out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    f64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    model64, _ = _onnx_graph(*(None if a is None else a.astype(np.float64) for a in (x, weight, offset, mask, b)),
                             attrs, TensorProto.DOUBLE)
    ref_out = ReferenceEvaluator(model64).run(None, f64)[0]
    assert ours.shape == ort_out.shape == ref_out.shape
    scale = max(1.0, float(np.abs(ref_out).max()))
    assert np.abs(ours - ort_out).max() <= 2e-5 * scale, np.abs(ours - ort_out).max()
    assert np.abs(ours - ref_out).max() <= 2e-5 * scale, np.abs(ours - ref_out).max()


def test_zero_offsets_and_unit_mask_are_a_convolution():
    x, weight, offset, _, b, attrs = _case(2, 6, 11, 9, 4, 3, 2, 1, 2, 2, 1, False, True, 0.0)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(b), 2, 1, 2, 2)
    ones = np.ones((2, 9, *offset.shape[-2:]), np.float32)
    np.testing.assert_allclose(_ours(x, weight, offset, None, b, attrs), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(_ours(x, weight, offset, ones, b, attrs), want.numpy(), atol=1e-5)


def test_bad_shapes_are_named():
    x, weight, offset, mask, b, attrs = _case(*CASES[0])
    with pytest.raises(ValueError, match="offset"):
        _ours(x, weight, offset[:, :9], mask, b, attrs)


class _Dcn(torch.nn.Module):
    def __init__(self, modulated: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(5, 4, 3, 3))
        self.bias = torch.nn.Parameter(torch.randn(5))
        self.modulated = modulated

    def forward(self, x, offset, mask):
        return torch.ops.centermask2.deform_conv2d(
            x, offset, mask if self.modulated else None, self.weight, self.bias, [2, 2], [1, 1], [1, 1], 1, 1
        )


@pytest.mark.parametrize("modulated", [True, False])
def test_lowering_to_onnx_deformconv(modulated):
    module = _Dcn(modulated).eval()
    x, off, mask = torch.randn(1, 4, 9, 11), torch.randn(1, 18, 5, 6) * 2, torch.rand(1, 9, 5, 6)
    program = torch.onnx.export(module, (x, off, mask), dynamo=True, opset_version=19,
                                custom_translation_table=translation_table(), external_data=False, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node if n.op_type == "DeformConv"] == ["DeformConv"]
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: v.numpy() for i, v in zip(sess.get_inputs(), (x, off, mask))}
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, module(x, off, mask).detach().numpy(), atol=1e-5)


def test_dcn_models_default_to_opset_19_and_refuse_lower():
    from centermask2.config import load_config
    from centermask2.modeling import build_model
    from golden import CONFIGS

    with torch.device("meta"):
        dcn = build_model(load_config(CONFIGS / "centermask_V_39_eSE_dcn_FPN_ms_3x.yaml"))
        plain = build_model(load_config(CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml"))
    assert default_opset(dcn) == 19 and default_opset(plain) == 17
    check_opset(dcn, 19)
    check_opset(plain, 16)
    with pytest.raises(InputError, match="DeformConv.*--opset 19"):
        check_opset(dcn, 18)
