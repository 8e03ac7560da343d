"""Panoptic-CenterMask (PanopticFPN configs): the semantic head, its padding invariance, the
post-processing and the combination, against upstream's golden case ``panoptic_V_39``."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from centermask2.checkpoint import load_weights
from centermask2.config import load_config
from centermask2.contract import OUTPUT_NAMES, PANOPTIC_OUTPUT_NAMES
from centermask2.data import load_and_resize, pad_batch
from centermask2.data.categories import coco_contiguous_to_dataset_id
from centermask2.errors import UnsupportedError
from centermask2.evaluation import instances_to_coco_json
from centermask2.evaluation.matching import match_boxes
from centermask2.modeling import CenterMask, PanopticCenterMask, build_model
from centermask2.modeling.layers import ShapeSpec, ValidRegion
from centermask2.modeling.panoptic import (
    CombineSettings,
    combine_semantic_and_instance_outputs,
    panoptic_postprocess,
    sem_seg_argmax,
    sem_seg_postprocess,
)
from centermask2.modeling.postprocessing import detector_postprocess
from centermask2.modeling.semantic_seg import BilinearUpsample2x, SemSegFPNHead
from golden import (
    CASES,
    CONFIGS,
    assert_results_match,
    case_info,
    golden_model_and_spec,
    recipe_arrays,
    write_checkpoint,
)

CASE = "panoptic_V_39"
ROOT = CASES[CASE]
PANOPTIC_CONFIGS = [f"panoptic_centermask_{a}_FPN_ms_3x.yaml" for a in ("R_50", "R_101", "X_101")] + [
    f"panoptic_centermask_{a}_eSE_FPN_ms_3x.yaml" for a in ("V_39", "V_57", "V_99")
]


# ------------------------------------------------------------------------------------ config, model


@pytest.mark.parametrize("name", PANOPTIC_CONFIGS)
def test_panoptic_configs_load_with_detectron2_defaults(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"
    family = "VOVNET" if "_V_" in name else "RESNETS"
    first = "stage2" if family == "VOVNET" else "res2"
    assert cfg.MODEL[family].OUT_FEATURES[0] == first and cfg.MODEL.FPN.IN_FEATURES[0] == first
    head = cfg.MODEL.SEM_SEG_HEAD
    assert (head.NAME, list(head.IN_FEATURES), head.NUM_CLASSES, head.CONVS_DIM, head.COMMON_STRIDE, head.NORM) == (
        "SemSegFPNHead", ["p2", "p3", "p4", "p5"], 54, 128, 4, "GN")
    assert head.LOSS_WEIGHT == 0.5 and head.IGNORE_VALUE == 255
    assert CombineSettings.from_config(cfg) == CombineSettings(0.5, 4096, 0.5)
    assert cfg.DATASETS.TEST == ("coco_2017_val_panoptic_separated",)


def test_unknown_panoptic_keys_still_fail():
    with pytest.raises(KeyError, match="OVERLAP_THRES"):
        load_config(CONFIGS / PANOPTIC_CONFIGS[3], ["MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRES", "0.3"])


def test_model_kind_and_output_names():
    cfg = load_config(CONFIGS / "panoptic_centermask_V_39_eSE_FPN_ms_3x.yaml", ["MODEL.DEVICE", "cpu"])
    with torch.device("meta"):
        model = build_model(cfg)
        instance = build_model(load_config(CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml"))
    assert isinstance(model, PanopticCenterMask) and model.output_names == PANOPTIC_OUTPUT_NAMES
    assert PANOPTIC_OUTPUT_NAMES == (*OUTPUT_NAMES, "sem_seg")
    assert type(instance) is CenterMask and instance.output_names == OUTPUT_NAMES
    assert model.backbone.out_feature_strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert model.size_divisibility == 32 and model.sem_seg_stride == 4 and model.num_sem_seg_classes == 54
    assert model.combine == CombineSettings(0.5, 4096, 0.5)
    # upstream's module order: the semantic head's tensors come last
    assert list(model.state_dict())[-1] == "sem_seg_head.predictor.bias"
    with pytest.raises(UnsupportedError, match="PanopticFPN"):
        model.training_losses(None, None, [])


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_checkpoints_load(tmp_path, fmt):
    """The golden weights as a detectron2 .pth and a model-zoo .pkl load completely, semantic head included."""
    path = write_checkpoint(CASE, tmp_path / f"panoptic model.{fmt}", fmt)
    model = build_model(load_config(CONFIGS / case_info(CASE)["config"], ["MODEL.DEVICE", "cpu"]))
    report = load_weights(model, path)
    assert report.is_complete and report.unexpected == [] and report.shape_mismatch == []
    want = recipe_arrays(CASE)
    assert set(want) == set(model.state_dict())
    for key in ("sem_seg_head.p5.4.norm.bias", "sem_seg_head.predictor.weight", "backbone.fpn_lateral2.weight"):
        assert np.array_equal(model.state_dict()[key].numpy(), want[key]), key


def test_head_structure_follows_the_strides():
    head = SemSegFPNHead(
        {"p5": ShapeSpec(16, 32), "p2": ShapeSpec(16, 4), "p3": ShapeSpec(16, 8)},
        num_classes=5, conv_dims=32, common_stride=4, norm="GN",
    )
    assert head.in_features == ["p2", "p3", "p5"]
    kinds = {n: [type(m).__name__ for m in getattr(head, n)] for n in head.in_features}
    assert kinds == {"p2": ["Conv2d"], "p3": ["Conv2d", "BilinearUpsample2x"],
                     "p5": ["Conv2d", "BilinearUpsample2x"] * 3}
    assert head.p2[0].bias is None and isinstance(head.p2[0].norm, nn.GroupNorm)
    plain = SemSegFPNHead({"p2": ShapeSpec(16, 4)}, num_classes=5, conv_dims=32, common_stride=4, norm="")
    assert plain.p2[0].bias is not None and plain.p2[0].norm is None


def test_upsampling_is_detectron2s():
    x = torch.randn(2, 3, 5, 7)
    want = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)(x)
    assert torch.equal(BilinearUpsample2x()(x), want)


# ------------------------------------------------------------------------------ padding invariance


def _randomize_norms(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.GroupNorm):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.5, 0.5)


def test_head_ignores_the_padding():
    """Levels of two images of different sizes inside larger tensors full of large values: each
    image's logits inside its region equal its own run (to float rounding: GroupNorm's statistics are
    summed differently), 0 outside."""
    torch.manual_seed(0)
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    head = SemSegFPNHead({k: ShapeSpec(16, s) for k, s in strides.items()}, num_classes=7, conv_dims=32,
                         common_stride=4, norm="GN").eval()
    _randomize_norms(head)
    inputs = [(64, 96), (96, 32)]  # padded input sizes (multiples of 32)
    big_h, big_w = 160, 128
    alone = [{k: torch.randn(1, 16, h // s, w // s) for k, s in strides.items()} for h, w in inputs]
    batch = {k: 50 * torch.randn(2, 16, big_h // s, big_w // s) for k, s in strides.items()}
    for i, feats in enumerate(alone):
        for k, f in feats.items():
            batch[k][i, :, : f.shape[-2], : f.shape[-1]] = f[0]
    region = ValidRegion(torch.tensor(inputs))
    regions = {k: region.after(s, s) for k, s in strides.items()}  # same sizes as the backbone's
    with torch.no_grad():
        got = head(batch, regions)
        plain = head(batch)
        for i, ((h, w), feats) in enumerate(zip(inputs, alone)):
            want = head(feats)[0]
            torch.testing.assert_close(got[i, :, : h // 4, : w // 4], want, atol=2e-5, rtol=1e-5)
            assert torch.count_nonzero(got[i, :, h // 4 :]) == 0 and torch.count_nonzero(got[i, :, :, w // 4 :]) == 0
            # the test can fail: without regions the padding leaks in
            assert (plain[i, :, : h // 4, : w // 4] - want).abs().max() > 1e-2


def test_model_sem_seg_ignores_the_padding():
    """The whole network (random weights, V-39 backbone): two small images in one batch padded
    far beyond their sizes give each its own default-padding ``sem_seg``."""
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / "panoptic_centermask_V_39_eSE_FPN_ms_3x.yaml", ["MODEL.DEVICE", "cpu"]))
    _randomize_norms(model)
    sizes = [(60, 90), (70, 40)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    x = torch.full((2, 3, 160, 192), 255, dtype=torch.uint8)
    for i, im in enumerate(images):
        x[i, :, : im.shape[1], : im.shape[2]] = im
    s = torch.tensor(sizes)
    with torch.inference_mode():
        both = model(model.normalize(x, s), s)
        included = model(model.normalize(x, s), s, ignore_padding=False)["sem_seg"]
        assert set(both) == set(PANOPTIC_OUTPUT_NAMES) and both["sem_seg"].shape == (2, 54, 40, 48)
        for i, (h, w) in enumerate(sizes):
            ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
            x1 = torch.zeros((1, 3, ph, pw), dtype=torch.uint8)
            x1[0, :, :h, :w] = images[i]
            s1 = torch.tensor([[h, w]])
            one = model(model.normalize(x1, s1), s1, ignore_padding=False)["sem_seg"][0]
            # random weights make features of ~500: float rounding of the backbone reaches ~5e-4 here
            torch.testing.assert_close(both["sem_seg"][i, :, : ph // 4, : pw // 4], one, atol=2e-3, rtol=1e-4)
            assert (included[i, :, : ph // 4, : pw // 4] - one).abs().max() > 0.1


# ----------------------------------------------------------------------------- golden: model runs


def _image_names() -> list[str]:
    return sorted(case_info(CASE)["num_detections"])


@pytest.fixture(scope="module")
def golden_runs():
    """The golden model and, per image, (resized image, original size, batch-of-one outputs)."""
    info, model, spec = golden_model_and_spec(CASE)
    runs = {}
    for name in _image_names():
        im, orig = load_and_resize(ROOT / "images" / name, spec)
        batch, sizes = pad_batch([im], spec)
        with torch.inference_mode():
            x, s = torch.from_numpy(batch), torch.from_numpy(sizes)
            out = model(model.normalize(x, s), s)
        runs[name] = (im, orig, {k: v[0] for k, v in out.items()})
    return model, spec, runs


def test_sem_seg_logits_match_upstream(golden_runs):
    """The head's stride-4 logits of image 1 equal upstream's (std 3.3; ~6e-4 apart with AVX2 kernels)."""
    _, _, runs = golden_runs
    raw = np.load(ROOT / "raw_outputs.npz")
    im, _, out = runs["000000000001.png"]
    assert np.array_equal(im.transpose(2, 0, 1), raw["1_input"])
    want = torch.from_numpy(raw["1_sem_seg_logits_stride4"])
    assert out["sem_seg"].shape == want.shape == (54, 200, 304)
    torch.testing.assert_close(out["sem_seg"], want, atol=2e-3, rtol=1e-4)


def _instances(out: dict, image_hw: tuple[int, int], orig_hw: tuple[int, int]) -> dict:
    n = int(out["num_detections"])
    return detector_postprocess(out["boxes"][:n], out["scores"][:n], out["classes"][:n], out["masks"][:n],
                                out["mask_scores"][:n], image_hw, orig_hw)


def test_instances_match_upstream(golden_runs):
    _, _, runs = golden_runs
    expected = json.loads((ROOT / "coco_instances_results.json").read_text())
    actual = []
    for name, (im, orig, out) in runs.items():
        result = _instances(out, im.shape[:2], orig)
        actual += instances_to_coco_json(result, int(name[:-4]), coco_contiguous_to_dataset_id())
    assert_results_match(expected, actual, "torch")


# ---------------------------------------------------------------- golden: panoptic, end to end


def _upstream_panoptic() -> dict[str, tuple[np.ndarray, dict[int, tuple[bool, int]], list[dict]]]:
    """Upstream's panoptic results per image: segment ids, {id: (isthing, contiguous category)}
    and segments_info; dataset ids mapped back as detectron2's ``coco_panoptic_separated`` does
    (things: the 80 COCO classes in id order; stuff: 1 + rank among the stuff ids)."""
    data = json.loads((ROOT / "panoptic_results.json").read_text())
    isthing = {c["id"]: bool(c["isthing"]) for c in data["categories"]}
    thing = {d: i for i, d in enumerate(coco_contiguous_to_dataset_id())}
    stuff = {d: i + 1 for i, d in enumerate(sorted(d for d, t in isthing.items() if not t))}
    out = {}
    for ann in data["annotations"]:
        rgb = np.asarray(Image.open(ROOT / "panoptic_results" / ann["file_name"]).convert("RGB"), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        cats = {}
        for seg in ann["segments_info"]:
            c = seg["category_id"]
            cats[seg["id"]] = (True, thing[c]) if isthing[c] else (False, stuff[c])
        out[ann["file_name"]] = (ids, cats, ann["segments_info"])
    return out


def _category_map(ids: np.ndarray, cats: dict[int, tuple[bool, int]]) -> np.ndarray:
    """Per pixel: -1 void, contiguous thing class, or 1000 + stuff label."""
    lookup = np.full(int(ids.max()) + 1, -1, np.int64)
    for sid, (thing, c) in cats.items():
        lookup[sid] = c if thing else 1000 + c
    return lookup[ids]


def _compare_panoptic(ids_e, cats_e, ids_a, cats_a) -> dict:
    """As the reference compare tool: segments matched by category and IoU > 0.5 (unique), and
    the share of pixels with the same category."""
    used, matched, worst = set(), 0, 1.0
    for se, ce in cats_e.items():
        me = ids_e == se
        for sa, ca in cats_a.items():
            if ca != ce or sa in used:
                continue
            ma = ids_a == sa
            inter = np.count_nonzero(me & ma)
            iou = inter / np.count_nonzero(me | ma) if inter else 0.0
            if iou > 0.5:
                used.add(sa)
                matched += 1
                worst = min(worst, iou)
                break
    agree = float(np.mean(_category_map(ids_e, cats_e) == _category_map(ids_a, cats_a)))
    return {"recall": matched / len(cats_e), "precision": matched / max(len(cats_a), 1), "min_iou": worst,
            "pixels": agree}


def test_end_to_end_matches_upstream(golden_runs):
    """Read, resize, run, post-process, combine: the semantic argmax and the panoptic segments are
    upstream's for both images."""
    model, _, runs = golden_runs
    upstream = _upstream_panoptic()
    info = case_info(CASE)
    c = info["combine"]
    assert model.combine == CombineSettings(c["overlap_thresh"], c["stuff_area_limit"], c["instances_confidence_thresh"])
    for name, (im, orig, out) in runs.items():
        result = panoptic_postprocess(out, im.shape[:2], orig, model.combine, model.size_divisibility)
        want_sem = np.asarray(Image.open(ROOT / "sem_seg_results" / name))
        assert result.sem_seg.shape == want_sem.shape == orig
        assert np.mean(result.sem_seg.numpy() == want_sem) >= 0.995, name

        ids = result.panoptic_seg.numpy()
        assert ids.dtype == np.int32 and ids.shape == orig
        assert [s["id"] for s in result.segments_info] == list(range(1, len(result.segments_info) + 1))
        assert set(np.unique(ids)) <= {0, *(s["id"] for s in result.segments_info)}
        cats = {s["id"]: (s["isthing"], s["category_id"]) for s in result.segments_info}
        ids_e, cats_e, info_e = upstream[name]
        r = _compare_panoptic(ids_e, cats_e, ids, cats)
        assert r["recall"] >= 0.95 and r["precision"] >= 0.95 and r["pixels"] >= 0.995, (name, r)
        assert len(result.segments_info) == info["num_segments"][name] == len(info_e)
        # things carry the box score (not mask_score) and their row, as upstream's
        things_e = [s for s in info_e if "instance_id" in s]
        things_a = [s for s in result.segments_info if s["isthing"]]
        assert len(things_a) == len(things_e)
        np.testing.assert_allclose([s["score"] for s in things_a], [s["score"] for s in things_e], atol=2e-3)
        # the same rows, but for detections whose scores tie to ~1e-6 (they may swap, see the golden README)
        for a, e in zip(things_a, things_e):
            assert a["instance_id"] == e["instance_id"] or abs(a["score"] - e["score"]) < 1e-5, (a, e)
        assert all(isinstance(s["score"], float) and s["score"] >= 0.5 for s in things_a)
        stuff_e = {cats_e[s["id"]][1]: s["area"] for s in info_e if "area" in s}
        stuff_a = {s["category_id"]: s["area"] for s in result.segments_info if not s["isthing"]}
        assert set(stuff_a) == set(stuff_e)
        assert all(abs(stuff_a[c] - stuff_e[c]) <= 0.01 * stuff_e[c] for c in stuff_e), (stuff_a, stuff_e)


def test_dynamic_batch_gives_each_image_its_own_result(golden_runs):
    """Both golden images (different sizes) in one batch: each row is the image's batch-of-one run,
    and post-processes to the same panoptic result."""
    model, spec, runs = golden_runs
    names = _image_names()
    ims = [runs[n][0] for n in names]
    assert ims[0].shape != ims[1].shape
    batch, sizes = pad_batch(ims, spec)
    with torch.inference_mode():
        x, s = torch.from_numpy(batch), torch.from_numpy(sizes)
        both = model(model.normalize(x, s), s)
    for i, name in enumerate(names):
        im, orig, one = runs[name]
        ph, pw = (-(-v // 32) * 32 // 4 for v in im.shape[:2])
        # float rounding only (logits of std 3; GroupNorm statistics summed differently): ~2.5e-4
        torch.testing.assert_close(both["sem_seg"][i, :, :ph, :pw], one["sem_seg"], atol=1e-3, rtol=1e-4)
        assert torch.count_nonzero(both["sem_seg"][i, :, ph:]) == 0
        n = int(one["num_detections"])
        assert int(both["num_detections"][i]) == n
        a = {k: v[:n].numpy() for k, v in one.items() if k not in ("num_detections", "sem_seg")}
        b = {k: v[i, :n].numpy() for k, v in both.items() if k not in ("num_detections", "sem_seg")}
        pairs = match_boxes(a["boxes"], a["classes"], a["scores"], b["boxes"], b["classes"])
        assert len(pairs) == n
        ia, ib = (np.array(idx) for idx in zip(*pairs))
        np.testing.assert_allclose(b["scores"][ib], a["scores"][ia], atol=1e-4)
        np.testing.assert_allclose(b["masks"][ib], a["masks"][ia], atol=1e-3)
        row = {k: v[i] for k, v in both.items()}
        got = panoptic_postprocess(row, im.shape[:2], orig, model.combine)
        want = panoptic_postprocess(one, im.shape[:2], orig, model.combine)
        assert np.mean(got.sem_seg.numpy() == want.sem_seg.numpy()) >= 0.9999
        r = _compare_panoptic(want.panoptic_seg.numpy(), {s["id"]: (s["isthing"], s["category_id"]) for s in
                              want.segments_info}, got.panoptic_seg.numpy(),
                              {s["id"]: (s["isthing"], s["category_id"]) for s in got.segments_info})
        assert r["recall"] == r["precision"] == 1.0 and r["pixels"] >= 0.999, r


# -------------------------------------------------------------------------- semantic post-processing


def _detectron2_sem_seg(logits: torch.Tensor, image_hw, output_hw) -> torch.Tensor:
    """detectron2's path, spelled out: the head's 4x upsampling of the whole map, then crop and resize."""
    up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    crop = up[:, : image_hw[0], : image_hw[1]].expand(1, -1, -1, -1)
    return F.interpolate(crop, size=output_hw, mode="bilinear", align_corners=False)[0]


@pytest.fixture(scope="module")
def upstream_logits() -> torch.Tensor:
    return torch.from_numpy(np.load(ROOT / "raw_outputs.npz")["1_sem_seg_logits_stride4"])


IMAGE1_HW, ORIG1_HW = (800, 1186), (500, 741)


def test_sem_seg_postprocess_is_detectron2s(upstream_logits):
    want = _detectron2_sem_seg(upstream_logits, IMAGE1_HW, ORIG1_HW)
    got = sem_seg_postprocess(upstream_logits, IMAGE1_HW, ORIG1_HW)
    assert got.shape == (54, 500, 741) and torch.equal(got, want)
    # and its argmax is upstream's saved one
    want_png = np.asarray(Image.open(ROOT / "sem_seg_results" / "000000000001.png"))
    assert np.mean(want.argmax(0).numpy() == want_png) >= 0.9999


def test_cropping_to_the_images_own_input_is_upstreams_result(upstream_logits):
    """A row of a larger batch (garbage beyond the image's 32-multiple) gives exactly the result of
    the image's own tensor: the crop to it first is what makes it so."""
    big = 100 * torch.randn(54, 240, 320)
    big[:, :200, :304] = upstream_logits
    want = sem_seg_postprocess(upstream_logits, IMAGE1_HW, ORIG1_HW)
    assert torch.equal(sem_seg_postprocess(big, IMAGE1_HW, ORIG1_HW), want)
    assert not torch.equal(sem_seg_postprocess(big, IMAGE1_HW, ORIG1_HW, size_divisibility=None), want)
    # an image reaching its tensor's last rows: upsampling the padded map would read the padding
    h, w = 799, 1185
    assert not torch.equal(_detectron2_sem_seg(big, (h, w), ORIG1_HW), _detectron2_sem_seg(upstream_logits, (h, w), ORIG1_HW))
    assert torch.equal(sem_seg_postprocess(big, (h, w), ORIG1_HW), _detectron2_sem_seg(upstream_logits, (h, w), ORIG1_HW))


def test_sem_seg_argmax_equals_argmax_of_the_logits(upstream_logits):
    logits = upstream_logits.clone()
    logits[7] = logits[3]  # exact ties: the first class wins, as torch.argmax
    logits[40] = logits[3]
    for hw, orig in ((IMAGE1_HW, ORIG1_HW), ((800, 1186), (801, 1187)), ((781, 1100), (300, 411))):
        want = sem_seg_postprocess(logits, hw, orig).argmax(0)
        got = sem_seg_argmax(logits, hw, orig)
        assert got.dtype == torch.int64 and torch.equal(got, want)
    assert int((sem_seg_argmax(logits, IMAGE1_HW, ORIG1_HW) == 7).sum()) == 0


@pytest.mark.parametrize("seed", range(4))
def test_sem_seg_argmax_skips_only_classes_that_cannot_win(seed):
    """Logits with exact and near ties (small integers, plus ~1e-6 noise) and a dominant class with
    spots of others: the labels are always those of the full resize."""
    g = torch.Generator().manual_seed(seed)
    ties = torch.randint(0, 4, (20, 25, 38), generator=g).float()
    near = ties + 1e-6 * torch.randn(ties.shape, generator=g)
    spots = torch.randn(20, 25, 38, generator=g) - 10
    spots[4] += 20
    spots[11, 3:5, 7:9] += 40  # a class that wins only around a few cells
    spots[12, 20, 30] += 40  # and one that wins around a single cell
    for logits in (ties, near, spots):
        for hw, orig in (((97, 150), (61, 90)), ((100, 152), (250, 333)), ((65, 120), (65, 120))):
            want = sem_seg_postprocess(logits, hw, orig).argmax(0)
            assert torch.equal(sem_seg_argmax(logits, hw, orig), want)
    assert set(torch.unique(sem_seg_argmax(spots, (100, 152), (250, 333))).tolist()) == {4, 11, 12}


# ---------------------------------------------------------------------------------------- combine


def _reference_combine(masks, scores, classes, semantic, overlap, stuff_area, score_thresh):
    """The combination as detectron2 documents it, one segment at a time in torch."""
    pan = torch.zeros_like(semantic, dtype=torch.int32)
    info, next_id = [], 0
    for i in torch.argsort(-scores, stable=True).tolist():
        if scores[i].item() < score_thresh:
            break
        m = masks[i]
        area = int(m.sum())
        if area == 0:
            continue
        inter = int((m & (pan > 0)).sum())
        if inter / area > overlap:
            continue
        next_id += 1
        pan[m & (pan == 0)] = next_id
        info.append({"id": next_id, "isthing": True, "score": scores[i].item(),
                     "category_id": int(classes[i]), "instance_id": i})
    for label in torch.unique(semantic).tolist():
        if label == 0:
            continue
        m = (semantic == label) & (pan == 0)
        area = int(m.sum())
        if area < stuff_area:
            continue
        next_id += 1
        pan[m] = next_id
        info.append({"id": next_id, "isthing": False, "category_id": label, "area": area})
    return pan, info


def _random_scene(seed: int, n: int = 30, h: int = 90, w: int = 120, labels: int = 12):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):
        y0, x0 = int(torch.randint(0, h - 5, (1,), generator=g)), int(torch.randint(0, w - 5, (1,), generator=g))
        y1, x1 = y0 + int(torch.randint(1, h // 2, (1,), generator=g)), x0 + int(torch.randint(1, w // 2, (1,), generator=g))
        masks[i, y0:y1, x0:x1] = torch.rand((min(y1, h) - y0, min(x1, w) - x0), generator=g) < 0.8
    masks[3] = False  # an empty mask
    scores = torch.rand(n, generator=g)
    scores[5] = scores[6]  # a tie
    classes = torch.randint(0, 80, (n,), generator=g)
    semantic = torch.randint(0, labels, (h // 10, w // 10), generator=g).repeat_interleave(10, 0).repeat_interleave(10, 1)
    return masks, scores, classes, semantic


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("settings", [(0.5, 4096, 0.5), (0.5, 200, 0.3), (0.2, 1, 0.0), (0.9, 0, 0.1)])
def test_combine_is_detectron2s(seed, settings):
    overlap, stuff_area, score_thresh = settings
    masks, scores, classes, semantic = _random_scene(seed)
    pan, info = combine_semantic_and_instance_outputs(
        {"masks": masks, "scores": scores, "classes": classes}, semantic, overlap, stuff_area, score_thresh)
    want_pan, want_info = _reference_combine(masks, scores, classes, semantic, overlap, stuff_area, score_thresh)
    assert pan.dtype == torch.int32 and torch.equal(pan, want_pan)
    assert info == want_info
    assert any(s["isthing"] for s in info) or score_thresh > 0.4


def test_combine_on_golden_instances_equals_the_reference(golden_runs):
    model, _, runs = golden_runs
    im, orig, out = runs["000000000002.png"]
    inst = _instances(out, im.shape[:2], orig)
    semantic = sem_seg_argmax(out["sem_seg"], im.shape[:2], orig)
    got = combine_semantic_and_instance_outputs(inst, semantic, **dataclasses.asdict(model.combine))
    want = _reference_combine(inst["masks"], inst["scores"], inst["classes"], semantic, 0.5, 4096, 0.5)
    assert torch.equal(got[0], want[0]) and got[1] == want[1]
    # numpy inputs work as well
    np_inst = {k: v.numpy() for k, v in inst.items()}
    assert torch.equal(combine_semantic_and_instance_outputs(np_inst, semantic.numpy())[0], want[0])


def test_combine_without_instances():
    semantic = torch.zeros((70, 70), dtype=torch.int64)
    semantic[:, 10:] = 3
    pan, info = combine_semantic_and_instance_outputs(
        {"masks": torch.zeros((0, 70, 70), dtype=torch.bool), "scores": torch.zeros(0), "classes": torch.zeros(0)},
        semantic, stuff_area_thresh=100)
    assert info == [{"id": 1, "isthing": False, "category_id": 3, "area": 4200}]
    assert int((pan == 1).sum()) == 4200 and int((pan == 0).sum()) == 700


def test_instance_model_is_unchanged_by_the_panoptic_config_path():
    """An instance config still builds the instance model with the instance outputs only."""
    _, model, _ = golden_model_and_spec("lite_V_19_slim_dw")
    x = torch.zeros((1, 3, 64, 96), dtype=torch.uint8)
    s = torch.tensor([[64, 90]])
    with torch.inference_mode():
        out = model(model.normalize(x, s), s)
    assert tuple(out) == OUTPUT_NAMES == model.output_names


def test_case_data_present():
    for name in ("case.json", "weights_recipe.json", "weights_exact.npz", "raw_outputs.npz",
                 "coco_instances_results.json", "panoptic_results.json"):
        assert (ROOT / name).is_file(), name
    for folder in ("images", "panoptic_results", "sem_seg_results"):
        assert sorted(p.name for p in (ROOT / folder).iterdir()) == _image_names(), folder
    assert Path(CONFIGS / case_info(CASE)["config"]).is_file()
