"""Training losses and gradients against upstream's recorded training step (tests/data/train_golden)."""

import numpy as np
import pytest
import torch

from centermask2.config import load_config
from centermask2.modeling import build_model
from centermask2.modeling.fcos import compute_locations
from centermask2.modeling.losses import fcos_targets, rasterize_polygons_in_box
from golden import CONFIGS, TRAIN_CASES, TRAIN_DATA, golden_inputs, train_case, training_model

_RUNS: dict = {}


def _run_step(case, dtype=torch.float32):
    """One recorded training step (forward + backward) of the model in ``dtype``: (case info, the
    model with its gradients, losses, statistics, batch tensor, image sizes, targets)."""
    info = train_case(case)
    model = training_model(case, dtype)
    x, sizes, targets = golden_inputs(case, model)
    torch.manual_seed(info["seed"])
    stats: dict = {}
    losses = model.training_losses(x, sizes, targets, stats)
    sum(losses[k] for k in info["loss_order"]).backward()
    return info, model, {k: v.detach() for k, v in losses.items()}, stats, x, sizes, targets


def _step(case):
    """The float32 step, shared by the tests of a case."""
    if case not in _RUNS:
        _RUNS[case] = _run_step(case)
    return _RUNS[case]


def _in_group(name: str, group: str) -> bool:
    """Whether parameter ``name`` belongs to a ``group_grad_norms`` group: ``backbone.fpn`` is the
    FPN module's own parameters, its top block (P6, P7) included: all of ``backbone`` but
    ``backbone.bottom_up``; the other groups are name prefixes."""
    if group == "backbone.fpn":
        return name.startswith("backbone.") and not name.startswith("backbone.bottom_up.")
    return name.startswith(group + ".")


def _check_gradients(model, record, rel_norm, rel_first8, rel_global, rel_group, rel_sum=None):
    """The model's gradients against a record (``train_case.json`` or its ``float64`` block):
    each named parameter's ``l2_norm`` (relative), ``first8`` (and ``sum``) within a fraction of
    its ``l2_norm``, the global and per-group norms (relative)."""
    params = dict(model.named_parameters())
    for name, rec in record["gradients"].items():
        grad = params[name].grad
        if rec.get("grad", "") is None:
            assert grad is None, f"{name} is frozen upstream"
            continue
        assert grad is not None, name
        g = grad.double().flatten()
        assert float(g.norm()) == pytest.approx(rec["l2_norm"], rel=rel_norm), name
        first8 = torch.tensor(rec["first8"], dtype=torch.float64)
        assert float((g[:8] - first8).abs().max()) <= rel_first8 * rec["l2_norm"], name
        if rel_sum is not None:
            assert abs(float(g.sum()) - rec["sum"]) <= rel_sum * rec["l2_norm"], name
    with_grad = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    assert len(with_grad) == record["num_params_with_grad"]
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for _, p in with_grad))
    assert float(total) == pytest.approx(record["global_grad_norm"], rel=rel_global)
    for group, want in record["group_grad_norms"].items():
        got = torch.sqrt(sum((p.grad.double() ** 2).sum() for n, p in with_grad if _in_group(n, group)))
        assert float(got) == pytest.approx(want, rel=rel_group), group


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_losses_match_upstream(case):
    info, _, losses, stats, x, _, _ = _step(case)
    assert list(x.shape) == info["data"]["batch_tensor_shape"]
    assert list(losses) == info["loss_order"]
    for name, want in info["losses"].items():
        assert str(losses[name].dtype) == "torch." + info["loss_dtypes"][name], name
        assert float(losses[name]) == pytest.approx(want, rel=1e-4), name
    assert stats["roi_head/num_fg_samples"] == info["stats"]["event_storage"]["roi_head/num_fg_samples"]
    for key in ("mask_rcnn/accuracy", "mask_rcnn/false_negative"):
        assert stats[key] == pytest.approx(info["stats"]["event_storage"][key], abs=1e-3), key


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_gradients_match_upstream(case):
    """float32 tolerances of the goldens' README (upstream itself moves l2 norms by 7e-3 between
    thread counts); a bug moves them by order 1."""
    _, model, _, _, _, _, _ = _step(case)
    _check_gradients(model, train_case(case), rel_norm=2e-2, rel_first8=2e-2, rel_global=5e-3, rel_group=2e-2)


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_float64_step_matches_upstream(case):
    """The sharp check of the goldens' README: the same step with the model in float64 against
    upstream's float64 record (where the float32 run's chaotic backward is gone: upstream moves
    these gradients by 1e-14 between thread counts). README tolerances: losses rtol 1e-6;
    ``l2_norm``, global and group norms rtol 1e-5; ``first8`` within 1e-5 x ``l2_norm``.

    Measured: losses within 1.2e-7, ``l2_norm`` 3.1e-6, global 3.2e-6, groups 3.2e-6, ``first8``
    1.4e-7 x ``l2_norm`` (Lite and V-39). The FCOS head's gradients agree to 1e-14; what reaches
    the mask branch differs at float32 rounding (the parts upstream computes in float32 in this
    mode), which the coherent ``sum`` of a large tensor accumulates to 2e-4 x ``l2_norm``: it is
    held to 1e-3 x ``l2_norm`` (a bug moves it by order 1)."""
    record = train_case(case)["float64"]
    _, model, losses, _, x, _, _ = _run_step(case, torch.float64)
    assert x.dtype == torch.float64
    assert list(losses) == record["loss_order"]
    for name, want in record["losses"].items():
        assert str(losses[name].dtype) == "torch." + record["loss_dtypes"][name], name
        assert float(losses[name]) == pytest.approx(want, rel=1e-6), name
    _check_gradients(model, record, rel_norm=1e-5, rel_first8=1e-5, rel_global=1e-5, rel_group=1e-5, rel_sum=1e-3)


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_fcos_targets_match_upstream(case):
    _, model, _, _, x, _, targets = _step(case)
    inter = np.load(TRAIN_DATA / case / "intermediates.npz")
    fcos = model.proposal_generator
    locations = []
    for (h, w), stride in zip(inter["fcos_level_hw"].tolist(), fcos.strides):
        locations.append(compute_locations(h, w, stride, x.device))
    labels, reg = fcos_targets(locations, fcos.strides, [t["boxes"] for t in targets],
                               [t["classes"] for t in targets], fcos.fcos_head.num_classes, fcos.train_settings)
    assert np.array_equal(labels.numpy(), inter["fcos_labels"].astype(np.int64))
    pos = torch.nonzero(labels != fcos.fcos_head.num_classes).flatten()
    assert np.array_equal(pos.numpy(), inter["fcos_pos_inds"])
    np.testing.assert_allclose(reg[pos].numpy(), inter["fcos_reg_targets_pos"], rtol=1e-6, atol=1e-5)


def test_mask_target_rasterization_edges():
    """A square polygon filling the box gives a full mask; one outside it gives nothing."""
    box = np.array([10, 20, 38, 48], dtype=np.float32)
    full = rasterize_polygons_in_box([np.array([10, 20, 38, 20, 38, 48, 10, 48], dtype=np.float64)], box, 28)
    assert full.all()
    none = rasterize_polygons_in_box([np.array([50, 60, 70, 60, 70, 80, 50, 80], dtype=np.float64)], box, 28)
    assert not none.any()


def test_frozen_parameters_get_no_gradient():
    """ResNet configs freeze the stem and res2 (FREEZE_AT 2); FrozenBN has no parameters."""
    cfg = load_config(CONFIGS / "centermask_R_50_FPN_ms_3x.yaml", ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images = torch.randn(1, 3, 128, 160)
    sizes = torch.tensor([[128, 150]])
    poly = np.array([20, 30, 90, 30, 90, 100, 20, 100], dtype=np.float64)
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0]]), "classes": torch.tensor([3]), "polygons": [[poly]]}]
    losses = model.training_losses(images, sizes, targets)
    sum(losses.values()).backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.bottom_up.stem", "backbone.bottom_up.res2")) for n in frozen)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("backbone.bottom_up.res3"))
    assert all(torch.isfinite(v) for v in losses.values())


def test_image_without_instances_trains():
    """An image with no annotation gives background-only FCOS targets and finite losses."""
    model = training_model("lite_V_19_slim_dw")
    images = torch.randn(2, 3, 128, 128)
    sizes = torch.tensor([[128, 128], [96, 128]])
    poly = np.array([20, 30, 90, 30, 90, 100, 20, 100], dtype=np.float64)
    targets = [
        {"boxes": torch.zeros((0, 4)), "classes": torch.zeros((0,), dtype=torch.int64), "polygons": []},
        {"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0]]), "classes": torch.tensor([3]), "polygons": [[poly]]},
    ]
    losses = model.training_losses(images, sizes, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = [targets[0], targets[0]]
    losses = model.training_losses(images, sizes, empty)
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_fcos_loc"].detach()) == 0.0
    sum(losses.values()).backward()
