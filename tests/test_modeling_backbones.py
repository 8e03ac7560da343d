"""Backbones + FPN: state dicts identical to upstream listings, output shapes, DCN and norm behaviour."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from centermask2.config import load_config
from centermask2.modeling.backbone import (
    BACKBONE_BUILDERS,
    FPN,
    VoVNet,
    build_backbone,
    build_fcos_mobilenetv2_fpn_backbone,
    build_fcos_resnet_fpn_backbone,
)
from centermask2.modeling.backbone.vovnet import DeformConvUnit, ESEModule, Hsigmoid, OSAModule
from centermask2.modeling.layers import FrozenBatchNorm2d
from golden import CONFIGS, STATE_DICTS

STATE_DICT_FILES = sorted(STATE_DICTS.glob("*.json"))


def _cfg(name: str, opts: tuple[str, ...] = ()):
    return load_config(CONFIGS / name, list(opts))


def _listing(path: Path) -> tuple[str, list[tuple[str, tuple[int, ...], str]]]:
    data = json.loads(path.read_text())
    entries = [
        (n[len("backbone.") :], tuple(shape), dtype)
        for n, shape, dtype in data["tensors"]
        if n.startswith("backbone.")
    ]
    return data["config"], entries


def _state_listing(module: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


def test_all_official_listings_present():
    assert len(STATE_DICT_FILES) == 20  # 14 instance + 6 panoptic configs


@pytest.mark.parametrize("listing", STATE_DICT_FILES, ids=lambda p: p.stem)
def test_state_dict_matches_upstream(listing):
    config_name, expected = _listing(listing)
    # Built on the meta device: only names, shapes and dtypes matter here, and it is fast.
    with torch.device("meta"):
        backbone = build_backbone(_cfg(config_name))
    got = _state_listing(backbone)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == expected  # same order as upstream's checkpoints, too


FORWARD_CASES = {
    "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml": 128,
    "centermask_lite_V_39_eSE_FPN_ms_4x.yaml": 128,
    "centermask_R_50_FPN_ms_3x.yaml": 256,
    "centermask_lite_Mv2_FPN_ms_4x.yaml": 128,
}
EXPECTED_STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


@pytest.mark.parametrize("config_name", list(FORWARD_CASES))
def test_forward_shapes(config_name):
    torch.manual_seed(0)
    channels = FORWARD_CASES[config_name]
    backbone = build_backbone(_cfg(config_name)).eval()
    assert isinstance(backbone, FPN)
    assert backbone.size_divisibility == 32
    assert backbone.out_feature_strides == EXPECTED_STRIDES
    assert backbone.out_feature_channels == {k: channels for k in EXPECTED_STRIDES}
    assert backbone.out_features == list(EXPECTED_STRIDES)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
    assert list(out) == list(EXPECTED_STRIDES)
    for name, stride in EXPECTED_STRIDES.items():
        assert out[name].shape == (1, channels, math.ceil(64 / stride), math.ceil(96 / stride)), name
        assert torch.isfinite(out[name]).all()
    # Second batch element is independent of the first.
    with torch.no_grad():
        out2 = backbone(torch.cat([x, torch.randn_like(x)]))
    torch.testing.assert_close(out2["p3"][:1], out["p3"], rtol=1e-4, atol=1e-4)


def test_vovnet_bottom_up_strides_and_channels():
    backbone = build_backbone(_cfg("centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml")).eval()
    bottom_up = backbone.bottom_up
    assert isinstance(bottom_up, VoVNet)
    assert bottom_up.out_feature_strides == {"stage3": 8, "stage4": 16, "stage5": 32}
    assert bottom_up.out_feature_channels == {"stage3": 256, "stage4": 384, "stage5": 512}
    with torch.no_grad():
        feats = bottom_up(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stage3": (1, 256, 8, 12),
        "stage4": (1, 384, 4, 6),
        "stage5": (1, 512, 2, 3),
    }


def test_mobilenet_feature_taps():
    cfg = _cfg(
        "centermask_lite_Mv2_FPN_ms_4x.yaml",
        ("MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']"),
    )
    bottom_up = build_fcos_mobilenetv2_fpn_backbone(cfg).bottom_up
    assert bottom_up.out_feature_channels == {"res2": 24, "res3": 32, "res4": 96, "res5": 320}
    assert bottom_up.out_feature_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = bottom_up(x)
        # res3 is the output of features[6] (the last 32-channel block).
        y = x
        for layer in bottom_up.features[:7]:
            y = layer(y)
    torch.testing.assert_close(feats["res3"], y, rtol=0, atol=0)


def test_resnet_builder_honours_mobilenet_flag():
    cfg = _cfg("centermask_lite_Mv2_FPN_ms_4x.yaml", ("MODEL.MOBILENET", "True"))
    with torch.device("meta"):
        via_resnet = build_fcos_resnet_fpn_backbone(cfg)
        direct = build_fcos_mobilenetv2_fpn_backbone(cfg)
    assert _state_listing(via_resnet) == _state_listing(direct)


def test_dcn_config_builds_and_runs():
    backbone = build_backbone(_cfg("centermask_V_39_eSE_dcn_FPN_ms_3x.yaml")).eval()
    plain = build_backbone(_cfg("centermask_V_39_eSE_FPN_ms_3x.yaml")).eval()
    names = backbone.state_dict()
    assert names["bottom_up.stage3.OSA3_1.layers.0.OSA3_1_0/conv_offset.weight"].shape == (27, 256, 3, 3)
    assert names["bottom_up.stage3.OSA3_1.layers.0.OSA3_1_0/conv.weight"].shape == (160, 256, 3, 3)
    with torch.no_grad():
        out, want = backbone(torch.randn(1, 3, 64, 96)), plain(torch.randn(1, 3, 64, 96))
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in want.items()}


@pytest.mark.parametrize("modulated", [True, False])
def test_deformable_unit_with_zero_offsets_is_a_convolution(modulated):
    """Zero offsets sample the regular grid: DCNv1 is the plain 3x3 conv, DCNv2 (mask logit 0) half of it."""
    torch.manual_seed(0)
    unit = DeformConvUnit(in_channels=8, out_channels=6, prefix="u", norm="", modulated=modulated,
                          deformable_groups=1).eval()
    x = torch.randn(2, 8, 9, 7)
    conv = getattr(unit, "u/conv")
    with torch.no_grad():
        got = unit(x)
        want = torch.relu(F.conv2d(x, conv.weight, padding=1) * (0.5 if modulated else 1.0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_resnet_deformable_stages_run():
    cfg = _cfg(
        "centermask_R_50_FPN_ms_3x.yaml",
        (
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
            "[False, False, False, True]",
            "MODEL.RESNETS.DEFORM_MODULATED",
            "True",
        ),
    )
    backbone = build_backbone(cfg).eval()
    sd = backbone.state_dict()
    assert sd["bottom_up.res5.0.conv2_offset.weight"].shape == (27, 512, 3, 3)
    assert sd["bottom_up.res5.0.conv2.weight"].shape == (512, 512, 3, 3)
    assert "bottom_up.res5.0.conv2.norm.running_var" in sd
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert out["p5"].shape[-2:] == (2, 2)


def test_frozen_batchnorm_matches_formula():
    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(5)
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(bn(x), x, rtol=0, atol=1e-6)  # identity when freshly built
    bn.weight.copy_(torch.rand(5) + 0.5)
    bn.bias.copy_(torch.randn(5))
    bn.running_mean.copy_(torch.randn(5))
    bn.running_var.copy_(torch.rand(5) + 0.1)
    shape = (1, 5, 1, 1)
    expected = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    expected = expected * bn.weight.view(shape) + bn.bias.view(shape)
    torch.testing.assert_close(bn(x), expected, rtol=1e-5, atol=1e-5)
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert not list(bn.parameters())


def test_frozen_batchnorm_loading():
    # Caffe2-style checkpoints carry only weight and bias: statistics default to identity.
    bn = FrozenBatchNorm2d(3)
    bn.load_state_dict({"weight": torch.full((3,), 2.0), "bias": torch.ones(3)})
    torch.testing.assert_close(bn.running_var, torch.ones(3))
    # A BatchNorm2d checkpoint (with num_batches_tracked) loads strictly.
    ref = nn.BatchNorm2d(3).eval()
    ref.running_mean.normal_()
    ref.weight.data.uniform_(0.5, 1.5)
    FrozenBatchNorm2d(3).load_state_dict(ref.state_dict())
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(ref)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(frozen(x), ref(x))


def test_ese_and_hsigmoid():
    torch.manual_seed(0)
    x = torch.linspace(-5, 5, 41)
    torch.testing.assert_close(Hsigmoid()(x), torch.clamp(x + 3, 0, 6) / 6)
    ese = ESEModule(channels=4)
    feat = torch.randn(2, 4, 5, 6)
    gate = F.conv2d(feat.mean(dim=(2, 3), keepdim=True), ese.fc.weight, ese.fc.bias)
    torch.testing.assert_close(ese(feat), feat * F.relu6(gate + 3) / 6)


@pytest.mark.parametrize("identity", [False, True])
def test_osa_identity_mapping(identity):
    module = OSAModule(
        in_channels=8,
        stage_channels=4,
        concat_channels=8,
        layers_per_block=2,
        name="OSA3_2",
        identity=identity,
        depthwise=False,
        norm="FrozenBN",
    ).eval()
    nn.init.zeros_(module.concat[0].weight)  # aggregated branch outputs relu(0) * gate = 0
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        out = module(x)
    torch.testing.assert_close(out, x if identity else torch.zeros_like(x))


def test_v39_identity_only_after_first_block():
    with torch.device("meta"):
        bottom_up = build_backbone(_cfg("centermask_V_39_eSE_FPN_ms_3x.yaml")).bottom_up
    assert not bottom_up.stage4.OSA4_1.identity
    assert bottom_up.stage4.OSA4_2.identity
    assert not hasattr(bottom_up.stage2, "Pooling")
    assert isinstance(bottom_up.stage3.Pooling, nn.MaxPool2d) and bottom_up.stage3.Pooling.ceil_mode


def test_batchnorm_and_groupnorm_variants():
    cfg = _cfg(
        "centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml",
        ("MODEL.VOVNET.NORM", "BN", "MODEL.FPN.NORM", "GN", "MODEL.FCOS.TOP_LEVELS", "1"),
    )
    backbone = build_backbone(cfg).eval()
    sd = backbone.state_dict()
    assert "bottom_up.stem.stem_1/norm.num_batches_tracked" in sd
    assert "fpn_lateral3.norm.weight" in sd and "fpn_lateral3.bias" not in sd
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p3", "p4", "p5", "p6"]


def test_top_levels_zero():
    cfg = _cfg("centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml", ("MODEL.FCOS.TOP_LEVELS", "0"))
    backbone = build_backbone(cfg)
    assert backbone.top_block is None
    assert backbone.out_feature_strides == {"p3": 8, "p4": 16, "p5": 32}


def test_unknown_backbone_name_lists_supported():
    cfg = _cfg("centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml").clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_nonexistent_backbone"
    with pytest.raises(ValueError, match="build_nonexistent_backbone") as err:
        build_backbone(cfg)
    for name in BACKBONE_BUILDERS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "opts, message",
    [
        (("MODEL.FCOS.TOP_LEVELS", "3"), "TOP_LEVELS"),
        (("MODEL.VOVNET.CONV_BODY", "V-42"), "CONV_BODY"),
        (("MODEL.FPN.IN_FEATURES", "['stage2', 'stage3']"), "IN_FEATURES"),
        (("MODEL.VOVNET.NORM", "LayerNormish"), "normalization"),
    ],
)
def test_bad_settings_raise_value_error(opts, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(_cfg("centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml", opts))
