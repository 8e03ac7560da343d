"""Padding-invariant execution (centermask2.modeling.layers.padding): each image computes what upstream
computes on it alone, padded only to a multiple of the size divisibility."""

import numpy as np
import pytest
import torch
from torch import nn

from centermask2.config import load_config
from centermask2.data import load_and_resize, pad_batch
from centermask2.errors import UnsupportedError
from centermask2.evaluation.matching import match_boxes
from centermask2.modeling import build_model
from centermask2.modeling.layers import ValidRegion, run_layer
from golden import CASES, CONFIGS, LITE, golden_model_and_spec

_LAYERS = {
    "conv3s2": nn.Conv2d(1, 1, 3, stride=2, padding=1),
    "conv1s2": nn.Conv2d(1, 1, 1, stride=2),
    "conv3d2": nn.Conv2d(1, 1, 3, stride=1, padding=2, dilation=2),
    "conv7s2": nn.Conv2d(1, 1, 7, stride=2, padding=3),
    "pool3s2ceil": nn.MaxPool2d(3, stride=2, ceil_mode=True),
    "pool3s2p1": nn.MaxPool2d(3, stride=2, padding=1),
    "pool2s2": nn.MaxPool2d(2, stride=2),
}


def _has_output(layer: nn.Module, size: int) -> bool:
    """Whether a tensor of ``size`` rows is big enough for ``layer`` (an unpadded pooling window
    must fit in it)."""
    return not (isinstance(layer, nn.MaxPool2d) and not layer.padding and size < layer.kernel_size)


@pytest.mark.parametrize(
    "layer,size",
    [pytest.param(layer, size, id=f"{name}-{size}") for name, layer in _LAYERS.items()
     for size in (1, 2, 5, 6, 7, 13, 25, 26) if _has_output(layer, size)],
)
def test_region_follows_the_layers_size_arithmetic(layer, size):
    """The region of a layer's output is the size the layer gives a tensor of the region's size,
    for odd sizes and ceil-mode pooling too (never size / stride)."""
    region = ValidRegion(torch.tensor([[size, size + 3]]))
    want = layer(torch.zeros(1, 1, size, size + 3)).shape[-2:]
    got = run_layer(layer, torch.zeros(1, 1, 40, 44), region)[1].sizes
    assert got.tolist() == [list(want)]


def _backbone_cases():
    return [
        ("centermask_lite_V_19_eSE_FPN_ms_4x.yaml", ["MODEL.VOVNET.NORM", "GN"]),
        ("centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml", []),
        ("centermask_V_39_eSE_dcn_FPN_ms_3x.yaml", []),
        ("centermask_R_50_FPN_ms_3x.yaml", ["MODEL.FPN.NORM", "GN"]),
        ("centermask_lite_Mv2_FPN_ms_4x.yaml", []),
    ]


@pytest.mark.parametrize("config,opts", _backbone_cases(), ids=["VoVNet-GN", "VoVNet-dw", "VoVNet-DCN", "ResNet-FPN-GN", "MobileNetV2"])
def test_backbone_features_ignore_the_padding(config, opts):
    """Every FPN level inside each image's region equals the unpadded run, whatever fills the
    padding (here large random values), for each backbone family; the regions are the unpadded
    maps' sizes."""
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / config, ["MODEL.DEVICE", "cpu", *opts]))
    backbone = model.backbone.eval()
    with torch.no_grad():
        for module in backbone.modules():  # non-trivial norms
            if isinstance(module, nn.GroupNorm):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, -0.5, 0.5)
        for name, p in backbone.named_parameters():  # DCN offsets start at zero upstream
            if "offset" in name:
                p.normal_(0, 0.02)
    small = torch.randn(2, 3, 64, 96)
    big = 30 * torch.randn(2, 3, 160, 192)
    big[0, :, :64, :96] = small[0]
    big[1, :, :64, :96] = small[1]
    region = ValidRegion(torch.tensor([[64, 96], [64, 96]]))
    with torch.no_grad():
        want = backbone(small)
        got, regions = backbone.forward_with_regions(big, region)
        plain = backbone(big)
    for name, feature in want.items():
        h, w = feature.shape[-2:]
        assert regions[name].sizes.tolist() == [[h, w], [h, w]], name
        torch.testing.assert_close(got[name][:, :, :h, :w], feature, atol=2e-4, rtol=1e-4, msg=name)
    # the test can fail: without regions the padding leaks in
    assert max((plain[n][:, :, : f.shape[-2], : f.shape[-1]] - f).abs().max() for n, f in want.items()) > 1e-2


def test_padded_and_batched_runs_equal_single_unpadded_runs():
    """Golden Lite weights: two images of different sizes in one batch padded far beyond their
    sizes give each image exactly its own default-padding run (upstream's batching does not)."""
    case = LITE
    info, model, spec = golden_model_and_spec(case)
    ims = [load_and_resize(CASES[case] / "images" / n, spec)[0] for n in sorted(info["num_detections"])]
    assert ims[0].shape != ims[1].shape
    big_batch, big_sizes = pad_batch(ims, size_divisibility=32, pad_to=(704, 1024))
    with torch.inference_mode():
        x, s = torch.from_numpy(big_batch), torch.from_numpy(big_sizes)
        both = model(model.normalize(x, s), s, ignore_padding=True)
        included = model(model.normalize(x, s), s, ignore_padding=False)
        for i, im in enumerate(ims):
            b1, s1 = pad_batch([im], spec)
            x1, sz1 = torch.from_numpy(b1), torch.from_numpy(s1)
            assert not model.needs_padding_invariance(x1, sz1)
            one = model(model.normalize(x1, sz1), sz1, ignore_padding=False)
            n = int(one["num_detections"][0])
            assert n > 0 and int(both["num_detections"][i]) == n
            # matched detection by detection: two Lite detections tie to 1e-6 in score and may swap rows
            a = {k: v[0, :n].numpy() for k, v in one.items() if k != "num_detections"}
            b = {k: v[i, :n].numpy() for k, v in both.items() if k != "num_detections"}
            pairs = match_boxes(a["boxes"], a["classes"], a["scores"], b["boxes"], b["classes"])
            assert len(pairs) == n
            ia, ib = (np.array(idx) for idx in zip(*pairs))
            for key, tol in (("boxes", 1e-3), ("scores", 1e-5), ("masks", 1e-4), ("mask_scores", 1e-5)):
                np.testing.assert_allclose(b[key][ib], a[key][ia], atol=tol, rtol=0, err_msg=key)
            assert not torch.allclose(included["scores"][i], one["scores"][0], atol=1e-3)
    assert model.needs_padding_invariance(x, s)


def test_unknown_spatial_layer_is_refused():
    class Blur(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(UnsupportedError, match="Blur.*--static-padding include"):
        run_layer(Blur(), torch.zeros(1, 1, 4, 4), ValidRegion(torch.tensor([[2, 2]])))


def test_group_norm_statistics_inside_the_region():
    gn = nn.GroupNorm(2, 4)
    nn.init.uniform_(gn.weight)
    nn.init.uniform_(gn.bias)
    x = torch.randn(1, 4, 5, 7)
    big = torch.full((1, 4, 9, 8), 1e3)
    big[:, :, :5, :7] = x
    got = ValidRegion(torch.tensor([[5, 7]])).group_norm(big, gn)[:, :, :5, :7]
    torch.testing.assert_close(got, gn(x), atol=1e-5, rtol=1e-5)
    assert np.isfinite(got.detach().numpy()).all()


def test_inputs_are_not_changed():
    """Masks apply in place inside the network, never to the caller's tensor."""
    model = build_model(load_config(CONFIGS / "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml", ["MODEL.DEVICE", "cpu"]))
    x = torch.randn(1, 3, 96, 128)
    before = x.clone()
    with torch.no_grad():
        model.backbone.forward_with_regions(x, ValidRegion(torch.tensor([[64, 96]])))
    assert torch.equal(x, before)
