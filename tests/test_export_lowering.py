"""The exporter's decomposition re-trace is skipped only where our one-node rewrites make it
redundant, and the graph then computes what the decomposed one computes (export/lowering.py)."""

import contextlib
import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from centermask2.export import lowering

LOGGER = "centermask2.export.lowering"


class EveryRewrite(torch.nn.Module):
    """One of each operator :data:`lowering._REWRITES` rewrites, on a dynamic-size input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.deconv = torch.nn.ConvTranspose2d(4, 2, 2, stride=2)
        # (not "mean", "var": the exporter names initializers after buffers, and its nodes after
        # operators, and does not keep the two apart)
        self.register_buffer("bn_mean", torch.tensor([0.1, -0.2, 0.3, 0.0]))
        self.register_buffer("bn_var", torch.tensor([1.5, 0.5, 2.0, 1.0]))
        self.register_buffer("bn_weight", torch.tensor([1.0, 2.0, -1.0, 0.5]))
        self.register_buffer("bn_bias", torch.tensor([0.0, 0.1, 0.2, 0.3]))

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = F.batch_norm(self.conv(x.to(torch.float32)), self.bn_mean, self.bn_var, self.bn_weight, self.bn_bias, False, 0.1, 1e-5)
        y = y.relu_()  # in place, on a tensor nothing else reads
        y = F.hardtanh(y * 1.5, 0.0, 6.0, inplace=True)  # nn.ReLU6(inplace=True): hardtanh_
        gate = F.adaptive_avg_pool2d(y, 1)
        y = self.deconv(y * gate)
        inside = (y > 0.1) & (y < 0.9)
        scale = 2 - sizes.to(torch.float32) / 100  # scalar - tensor
        same = sizes.to(torch.int64)  # a cast to the dtype it has
        return y * scale[:, None, None, None], inside, same


class KeepsTheInput(torch.nn.Module):
    """An in-place ReLU on a tensor a view still reads: out of place would change the view."""

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x * 2 - 1  # x in [0, 1): half of it negative
        view = y[:, :1]
        y.relu_()
        return view + 0, sizes


def _sample() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(2, 3, 16, 24), torch.tensor([50, 70])


def _dynamic_shapes() -> tuple[dict, dict]:
    batch = torch.export.Dim("batch", min=1, max=8)
    h, w = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
    return {0: batch, 2: 4 * h, 3: 4 * w}, {0: batch}


def test_the_module_holds_every_operator_there_is_a_rewrite_for():
    program = torch.export.export(EveryRewrite().eval(), _sample(), dynamic_shapes=_dynamic_shapes())
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert set(lowering._REWRITES) <= targets, set(lowering._REWRITES) - targets


def _export(module: torch.nn.Module, path, lowered: bool) -> None:
    hook = lowering.decompose_only_where_needed() if lowered else contextlib.nullcontext()
    with torch.no_grad(), hook:
        program = torch.onnx.export(module.eval(), _sample(), dynamo=True, optimize=False, external_data=False,
                                    dynamic_shapes=_dynamic_shapes(), verbose=False)
    program.save(str(path))


def _run(path, x: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, (x, sizes))))


@pytest.mark.parametrize("module,skipped", [(EveryRewrite, True), (KeepsTheInput, False)])
def test_lowered_export_computes_what_the_decomposed_one_does(tmp_path, caplog, module, skipped):
    torch.manual_seed(0)
    model = module()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _export(model, tmp_path / "lowered.onnx", lowered=True)
    _export(model, tmp_path / "decomposed.onnx", lowered=False)

    x = np.random.default_rng(0).random((3, 3, 20, 28), dtype=np.float32)  # not the sample's size
    sizes = np.array([40, 60, 90], dtype=np.int64)
    lowered = _run(tmp_path / "lowered.onnx", x, sizes)
    decomposed = _run(tmp_path / "decomposed.onnx", x, sizes)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(sizes))]
    for a, b, e in zip(lowered, decomposed, expected):
        assert a.dtype == b.dtype == e.dtype and a.shape == b.shape == e.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    assert ("no decomposition re-trace" in caplog.text) is skipped, caplog.text


def test_an_operator_without_a_rewrite_goes_through_the_decomposition(tmp_path, caplog):
    class Meshgrid(torch.nn.Module):
        def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
            ys, xs = torch.meshgrid(torch.arange(x.shape[2]), torch.arange(x.shape[3]), indexing="ij")
            return x + (ys + xs).to(x.dtype), sizes

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _export(Meshgrid(), tmp_path / "m.onnx", lowered=True)
    assert "no rewrite of aten.meshgrid.indexing" in caplog.text and "no decomposition re-trace" not in caplog.text
    x = np.zeros((1, 3, 8, 12), dtype=np.float32)
    out = _run(tmp_path / "m.onnx", x, np.array([1]))[0]
    np.testing.assert_array_equal(out[0, 0], np.add.outer(np.arange(8), np.arange(12)))


def test_the_hook_restores_the_exporter():
    from torch.onnx._internal.exporter import _fx_passes

    original = _fx_passes.decompose_with_registry
    with lowering.decompose_only_where_needed():
        assert _fx_passes.decompose_with_registry is not original
    assert _fx_passes.decompose_with_registry is original
