"""Tests for centermask2.config: official configs, _BASE_ resolution, checked merges, freezing."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import pytest
import yaml

from centermask2.config import (
    CfgNode,
    ConfigError,
    UnknownConfigKeyError,
    get_cfg,
    load_config,
    load_yaml_with_base,
)
from golden import CONFIGS

OFFICIAL_CONFIGS = [
    "Base-CenterMask-VoVNet.yaml",
    "Base-CenterMask-Lite-VoVNet.yaml",
    "Base-CenterMask-ResNet.yaml",
    "centermask_V_39_eSE_FPN_ms_3x.yaml",
    "centermask_V_57_eSE_FPN_ms_3x.yaml",
    "centermask_V_99_eSE_FPN_ms_3x.yaml",
    "centermask_V_39_eSE_dcn_FPN_ms_3x.yaml",
    "centermask_V_57_eSE_dcn_FPN_ms_3x.yaml",
    "centermask_V_99_eSE_dcn_FPN_ms_3x.yaml",
    "centermask_R_50_FPN_ms_3x.yaml",
    "centermask_R_101_FPN_ms_3x.yaml",
    "centermask_X_101_FPN_ms_3x.yaml",
    "centermask_lite_V_19_eSE_FPN_ms_4x.yaml",
    "centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml",
    "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml",
    "centermask_lite_V_39_eSE_FPN_ms_4x.yaml",
    "centermask_lite_Mv2_FPN_ms_4x.yaml",
]
# Panoptic-CenterMask (MODEL.META_ARCHITECTURE: PanopticFPN); tested in test_modeling_panoptic.py
PANOPTIC_CONFIGS = [
    "Base-Panoptic-ResNet-FPN.yaml",
    "Base-Panoptic-VoVNet-FPN.yaml",
    "panoptic_centermask_R_50_FPN_ms_3x.yaml",
    "panoptic_centermask_R_101_FPN_ms_3x.yaml",
    "panoptic_centermask_X_101_FPN_ms_3x.yaml",
    "panoptic_centermask_V_39_eSE_FPN_ms_3x.yaml",
    "panoptic_centermask_V_57_eSE_FPN_ms_3x.yaml",
    "panoptic_centermask_V_99_eSE_FPN_ms_3x.yaml",
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- official configs -------------------------------------------------------------------
def test_official_config_set_is_complete() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(OFFICIAL_CONFIGS + PANOPTIC_CONFIGS)


@pytest.mark.parametrize("name", OFFICIAL_CONFIGS)
def test_every_official_config_loads(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.is_frozen()
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "FCOS"
    assert cfg.MODEL.ROI_HEADS.NAME == "CenterROIHeads"
    assert cfg.MODEL.ROI_HEADS.IN_FEATURES == ["p3", "p4", "p5"]
    assert cfg.MODEL.ROI_MASK_HEAD.NAME == "SpatialAttentionMaskHead"
    assert cfg.MODEL.ROI_MASK_HEAD.ASSIGN_CRITERION == "ratio"
    assert cfg.MODEL.MASK_ON is True and cfg.MODEL.MASKIOU_ON is True
    assert cfg.MODEL.FCOS.POST_NMS_TOPK_TEST == 50
    assert cfg.DATASETS.TEST == ("coco_2017_val",)
    # Keys no official file sets keep the upstream defaults.
    assert cfg.MODEL.FCOS.NMS_TH == 0.6
    assert cfg.MODEL.FCOS.INFERENCE_TH_TEST == 0.05
    assert cfg.MODEL.FCOS.PRE_NMS_TOPK_TEST == 1000
    assert cfg.MODEL.FCOS.NUM_CLASSES == 80
    assert cfg.MODEL.FCOS.FPN_STRIDES == [8, 16, 32, 64, 128]
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100


def test_vovnet_v39_values() -> None:
    cfg = load_config(CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_fcos_vovnet_fpn_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.VOVNET.CONV_BODY == "V-39-eSE"
    assert cfg.MODEL.VOVNET.OUT_FEATURES == ["stage3", "stage4", "stage5"]
    assert cfg.MODEL.VOVNET.STAGE_WITH_DCN == (False, False, False, False)
    assert cfg.MODEL.FPN.IN_FEATURES == ["stage3", "stage4", "stage5"]
    assert cfg.MODEL.FPN.OUT_CHANNELS == 256
    assert cfg.MODEL.FCOS.NUM_CLS_CONVS == 4
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 4
    assert cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION == 14
    assert cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV == 4
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.INPUT.MIN_SIZE_TEST == 800 and cfg.INPUT.MAX_SIZE_TEST == 1333
    assert cfg.SOLVER.STEPS == (210000, 250000) and cfg.SOLVER.MAX_ITER == 270000
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 10000 and cfg.SOLVER.BASE_LR == 0.01
    assert cfg.MODEL.WEIGHTS.startswith("https://www.dropbox.com/")
    assert cfg.OUTPUT_DIR == "output/centermask/CenterMask-V-39-ms-3x"


@pytest.mark.parametrize(
    "name, body",
    [
        ("centermask_lite_V_19_eSE_FPN_ms_4x.yaml", "V-19-eSE"),
        ("centermask_lite_V_19_slim_eSE_FPN_ms_4x.yaml", "V-19-slim-eSE"),
        ("centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml", "V-19-slim-dw-eSE"),
        ("centermask_lite_V_39_eSE_FPN_ms_4x.yaml", "V-39-eSE"),
    ],
)
def test_lite_values(name: str, body: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.MODEL.VOVNET.CONV_BODY == body
    assert cfg.MODEL.FPN.OUT_CHANNELS == 128
    assert cfg.INPUT.MIN_SIZE_TEST == 600 and cfg.INPUT.MAX_SIZE_TEST == 1000
    assert cfg.INPUT.MIN_SIZE_TRAIN == (580, 600) and cfg.INPUT.MAX_SIZE_TRAIN == 1000
    assert cfg.MODEL.FCOS.NUM_CLS_CONVS == 2 and cfg.MODEL.FCOS.NUM_BOX_CONVS == 2
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 2 and cfg.MODEL.ROI_MASK_HEAD.CONV_DIM == 128
    assert cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV == 2 and cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM == 128
    assert cfg.SOLVER.STEPS == (300000, 340000) and cfg.SOLVER.MAX_ITER == 360000


def test_mobilenet_lite_values() -> None:
    cfg = load_config(CONFIGS / "centermask_lite_Mv2_FPN_ms_4x.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_fcos_mobilenetv2_fpn_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.FPN.IN_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.FPN.OUT_CHANNELS == 128
    assert cfg.INPUT.MIN_SIZE_TEST == 600 and cfg.INPUT.MAX_SIZE_TEST == 1000
    assert cfg.OUTPUT_DIR == "output/centermask/CenterMask-Lite-MNv2-ms-4x"


@pytest.mark.parametrize("name, depth", [("centermask_R_50_FPN_ms_3x.yaml", 50), ("centermask_R_101_FPN_ms_3x.yaml", 101)])
def test_resnet_values(name: str, depth: int) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.MODEL.BACKBONE.NAME == "build_fcos_resnet_fpn_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.RESNETS.NUM_GROUPS == 1 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/MSRA/")


def test_resnext_values() -> None:
    cfg = load_config(CONFIGS / "centermask_X_101_FPN_ms_3x.yaml")
    assert cfg.MODEL.PIXEL_STD == [57.375, 57.120, 58.395]
    assert all(isinstance(v, float) for v in cfg.MODEL.PIXEL_STD)
    assert cfg.MODEL.RESNETS.NUM_GROUPS == 32
    assert cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 8
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False


@pytest.mark.parametrize("depth", [39, 57, 99])
def test_dcn_stage_flags_parse_as_tuple_of_bools(depth: int) -> None:
    cfg = load_config(CONFIGS / f"centermask_V_{depth}_eSE_dcn_FPN_ms_3x.yaml")
    flags = cfg.MODEL.VOVNET.STAGE_WITH_DCN
    assert isinstance(flags, tuple) and flags == (False, True, True, True)
    assert all(type(f) is bool for f in flags)
    assert cfg.MODEL.VOVNET.WITH_MODULATED_DCN is True
    assert cfg.MODEL.VOVNET.DEFORMABLE_GROUPS == 1
    assert cfg.MODEL.VOVNET.CONV_BODY == f"V-{depth}-eSE"


# ---- defaults -----------------------------------------------------------------------------
def test_get_cfg_defaults_and_independent_copies() -> None:
    a, b = get_cfg(), get_cfg()
    assert not a.is_frozen()
    assert a.VERSION == 2
    assert a.MODEL.DEVICE == "cuda" and a.MODEL.WEIGHTS == ""
    assert a.MODEL.BACKBONE.FREEZE_AT == 2
    assert a.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
    assert a.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert a.MODEL.VOVNET.NORM == "FrozenBN" and a.MODEL.VOVNET.OUT_CHANNELS == 256
    assert a.MODEL.ROI_MASKIOU_HEAD.NAME == "MaskIoUHead"
    assert a.MODEL.MOBILENET is False
    assert a.INPUT.MASK_FORMAT == "polygon" and a.INPUT.MIN_SIZE_TRAIN == (800,)
    assert a.SOLVER.WEIGHT_DECAY_BIAS is None
    a.MODEL.FCOS.NUM_CLASSES = 3
    a.MODEL.PIXEL_MEAN.append(0.0)
    assert b.MODEL.FCOS.NUM_CLASSES == 80 and len(b.MODEL.PIXEL_MEAN) == 3
    assert get_cfg().MODEL.FCOS.NUM_CLASSES == 80 and len(get_cfg().MODEL.PIXEL_MEAN) == 3


def test_attribute_and_item_access() -> None:
    cfg = get_cfg()
    assert isinstance(cfg, dict) and isinstance(cfg.MODEL, CfgNode)
    assert cfg["MODEL"]["FCOS"]["NMS_TH"] is cfg.MODEL.FCOS.NMS_TH
    with pytest.raises(AttributeError, match="Did you mean 'NMS_TH'"):
        _ = cfg.MODEL.FCOS.NMS_THRESH


# ---- _BASE_ -------------------------------------------------------------------------------
def test_base_chain_resolves_relative_to_including_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "my configs"  # a path with a space
    write(root / "bases" / "deeper dir" / "root.yaml", "MODEL:\n  FCOS:\n    NMS_TH: 0.3\n    NUM_CLASSES: 7\n")
    write(
        root / "bases" / "base.yaml",
        '_BASE_: "deeper dir/root.yaml"\nMODEL:\n  FCOS:\n    NMS_TH: 0.4\n  MASK_ON: True\nINPUT:\n  MIN_SIZE_TEST: 512\n',
    )
    child = write(root / "exp" / "child.yaml", "_BASE_: ../bases/base.yaml\nINPUT:\n  MIN_SIZE_TEST: 640\n")
    monkeypatch.chdir(tmp_path)  # resolution must not depend on the working directory

    cfg = load_config(child)
    assert cfg.MODEL.FCOS.NMS_TH == 0.4  # base overrides root
    assert cfg.MODEL.FCOS.NUM_CLASSES == 7  # sibling from root survives the recursive merge
    assert cfg.MODEL.MASK_ON is True
    assert cfg.INPUT.MIN_SIZE_TEST == 640  # child overrides base
    assert cfg.INPUT.MAX_SIZE_TEST == 1333  # untouched default

    raw = load_yaml_with_base(child)
    assert "_BASE_" not in raw
    assert raw == {"MODEL": {"FCOS": {"NMS_TH": 0.4, "NUM_CLASSES": 7}, "MASK_ON": True}, "INPUT": {"MIN_SIZE_TEST": 640}}


def test_base_can_be_absolute_official_file(tmp_path: Path) -> None:
    official = CONFIGS / "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml"
    user = write(tmp_path / "with space" / "user.yaml", f'_BASE_: "{official}"\nMODEL:\n  FCOS:\n    NUM_CLASSES: 3\n')
    cfg = load_config(user)
    assert cfg.MODEL.VOVNET.CONV_BODY == "V-19-slim-dw-eSE"
    assert cfg.MODEL.FPN.OUT_CHANNELS == 128  # from Base-CenterMask-Lite-VoVNet.yaml, two levels up
    assert cfg.MODEL.FCOS.NUM_CLASSES == 3


def test_base_list_merges_in_order(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "INPUT:\n  MIN_SIZE_TEST: 100\n  MAX_SIZE_TEST: 200\n")
    write(tmp_path / "b.yaml", "INPUT:\n  MIN_SIZE_TEST: 300\n")
    child = write(tmp_path / "c.yaml", "_BASE_: [a.yaml, b.yaml]\n")
    cfg = load_config(child)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (300, 200)


def test_missing_base_names_both_files(tmp_path: Path) -> None:
    child = write(tmp_path / "sub" / "child.yaml", "_BASE_: ../nope/base.yaml\n")
    with pytest.raises(FileNotFoundError) as info:
        load_config(child)
    message = str(info.value)
    assert "base.yaml" in message and str(child) in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does_not_exist.yaml"):
        load_config(tmp_path / "does_not_exist.yaml")


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(write(tmp_path / "broken.yaml", "MODEL: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = write(tmp_path / "evil.yaml", "MODEL:\n  WEIGHTS: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(path)


# ---- unknown keys ---------------------------------------------------------------------------
def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "MODEL:\n  FCOS:\n    NMS_THRESH: 0.5\n")
    with pytest.raises(UnknownConfigKeyError) as info:
        load_config(path)
    message = str(info.value)
    assert message == f"Unknown config key 'MODEL.FCOS.NMS_THRESH' (in {path}). Did you mean 'MODEL.FCOS.NMS_TH'?"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_unknown_key_reports_the_file_that_set_it(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "INPUT:\n  MIN_SIZE_TESTS: 600\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nINPUT:\n  MAX_SIZE_TEST: 1000\n")
    with pytest.raises(UnknownConfigKeyError, match=r"'INPUT\.MIN_SIZE_TESTS' \(in .*base\.yaml\)\. Did you mean 'INPUT\.MIN_SIZE_TEST'") as info:
        load_config(child)
    assert str(base) in str(info.value)


def test_unknown_key_suggests_other_section(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "MODEL:\n  NUM_CLASSES: 3\n")
    with pytest.raises(UnknownConfigKeyError, match="MODEL.FCOS.NUM_CLASSES"):
        load_config(path)


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "MODEL:\n  FCOS:\n    ZZZZZZ: 1\n")
    with pytest.raises(UnknownConfigKeyError, match="Valid keys under 'MODEL.FCOS'"):
        load_config(path)


def test_unknown_solver_keys_are_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "SOLVER:\n  SOME_NEW_OPTION: (1, 2)\n  STEPS: (5, 6)\n")
    cfg = load_config(path)
    assert cfg.SOLVER.SOME_NEW_OPTION == (1, 2)
    assert cfg.SOLVER.STEPS == (5, 6)


# ---- types --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text, key, expected",
    [
        ("INPUT:\n  MIN_SIZE_TEST: abc\n", "INPUT.MIN_SIZE_TEST", "int"),
        ("INPUT:\n  MIN_SIZE_TEST: 600.5\n", "INPUT.MIN_SIZE_TEST", "int"),
        ("MODEL:\n  MASK_ON: 1\n", "MODEL.MASK_ON", "bool"),
        ("MODEL:\n  FCOS:\n    NMS_TH: [0.5]\n", "MODEL.FCOS.NMS_TH", "float"),
        ("MODEL:\n  WEIGHTS: 3\n", "MODEL.WEIGHTS", "str"),
        ("MODEL:\n  PIXEL_STD: [1.0, x, 1.0]\n", "MODEL.PIXEL_STD[1]", "float"),
        ("MODEL:\n  VOVNET:\n    OUT_FEATURES: stage3\n", "MODEL.VOVNET.OUT_FEATURES", "list"),
    ],
)
def test_bad_type_in_yaml(tmp_path: Path, yaml_text: str, key: str, expected: str) -> None:
    path = write(tmp_path / "bad.yaml", yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"'{key}'" in message and str(path) in message and f"expects {expected}" in message


def test_section_given_a_scalar(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'MODEL.FCOS'.*is a section"):
        load_config(write(tmp_path / "bad.yaml", "MODEL:\n  FCOS: 3\n"))


def test_int_accepted_for_float_and_lists_for_tuples(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ok.yaml",
        "MODEL:\n  FCOS:\n    NMS_TH: 1\n  PIXEL_MEAN: [100, 110, 120]\n  VOVNET:\n    STAGE_WITH_DCN: [True, False, False, False]\n",
    )
    cfg = load_config(path)
    assert cfg.MODEL.FCOS.NMS_TH == 1.0 and isinstance(cfg.MODEL.FCOS.NMS_TH, float)
    assert cfg.MODEL.PIXEL_MEAN == [100.0, 110.0, 120.0] and all(isinstance(v, float) for v in cfg.MODEL.PIXEL_MEAN)
    assert cfg.MODEL.VOVNET.STAGE_WITH_DCN == (True, False, False, False)


def test_unsupported_version(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VERSION 1"):
        load_config(write(tmp_path / "old.yaml", "VERSION: 1\n"))


# ---- command-line overrides -------------------------------------------------------------------
def test_merge_from_list_parses_and_checks_values() -> None:
    cfg = load_config(
        CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml",
        [
            "MODEL.WEIGHTS", "ckpt.pth",
            "MODEL.DEVICE", "cpu",
            "MODEL.FCOS.NMS_TH", "0.5",
            "MODEL.FCOS.NUM_CLASSES", "3",
            "MODEL.MASK_ON", "False",
            "INPUT.MIN_SIZE_TRAIN", "(640, 800)",
            "MODEL.VOVNET.STAGE_WITH_DCN", "[False, True, True, True]",
            "OUTPUT_DIR", "'out dir'",
        ],
    )  # fmt: skip
    assert cfg.MODEL.WEIGHTS == "ckpt.pth" and cfg.MODEL.DEVICE == "cpu"
    assert cfg.MODEL.FCOS.NMS_TH == 0.5 and cfg.MODEL.FCOS.NUM_CLASSES == 3
    assert cfg.MODEL.MASK_ON is False
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 800)
    assert cfg.MODEL.VOVNET.STAGE_WITH_DCN == (False, True, True, True)
    assert cfg.OUTPUT_DIR == "out dir"
    assert cfg.is_frozen()


def test_string_defaults_keep_numeric_looking_text() -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.WEIGHTS", "123", "OUTPUT_DIR", "1e5"])
    assert cfg.MODEL.WEIGHTS == "123" and cfg.OUTPUT_DIR == "1e5"


def test_merge_from_list_bad_type() -> None:
    cfg = get_cfg()
    with pytest.raises(ConfigError, match=r"'INPUT\.MIN_SIZE_TEST' \(in command-line overrides\) expects int .*'big'"):
        cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "big"])


def test_merge_from_list_unknown_key() -> None:
    with pytest.raises(UnknownConfigKeyError, match=r"'MODEL\.FCOS\.NMS_THRESH' \(in command-line overrides\)\. Did you mean 'MODEL\.FCOS\.NMS_TH'"):
        get_cfg().merge_from_list(["MODEL.FCOS.NMS_THRESH", "0.5"])


def test_merge_from_list_odd_items() -> None:
    with pytest.raises(ConfigError, match="KEY VALUE pairs.*'MODEL.DEVICE' has no value"):
        get_cfg().merge_from_list(["MODEL.WEIGHTS", "x.pth", "MODEL.DEVICE"])
    with pytest.raises(ConfigError, match="single string"):
        get_cfg().merge_from_list("MODEL.DEVICE cpu")  # type: ignore[arg-type]


def test_failed_merge_changes_nothing() -> None:
    cfg = get_cfg()
    with pytest.raises(ConfigError, match="'INPUT.MIN_SIZE_TEST' .* expects int .*; got 'big'"):
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "big"])
    assert cfg.MODEL.DEVICE == "cuda"


def test_merge_updates_sections_in_place() -> None:
    cfg = get_cfg()
    fcos = cfg.MODEL.FCOS
    cfg.merge_from_list(["MODEL.FCOS.NMS_TH", "0.3"])
    assert fcos is cfg.MODEL.FCOS and fcos.NMS_TH == 0.3


# ---- freezing, copies, dump ---------------------------------------------------------------------
def test_frozen_config_refuses_changes() -> None:
    cfg = load_config(CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml")
    with pytest.raises(AttributeError, match="frozen"):
        cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(AttributeError, match="frozen"):
        cfg["MODEL"]["FCOS"]["NMS_TH"] = 0.1
    with pytest.raises(AttributeError, match="frozen"):
        cfg.NEW_KEY = 1
    with pytest.raises(AttributeError, match="frozen"):
        cfg.MODEL.update({"DEVICE": "cpu"})
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.DEVICE == "cuda"

    editable = cfg.clone()
    assert editable.is_frozen()
    editable.defrost()
    editable.MODEL.DEVICE = "cpu"
    assert editable.MODEL.DEVICE == "cpu" and cfg.MODEL.DEVICE == "cuda"


def test_dump_round_trip(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "centermask_V_39_eSE_dcn_FPN_ms_3x.yaml", ["MODEL.DEVICE", "cpu"])
    text = cfg.dump()
    assert yaml.safe_load(text)["MODEL"]["VOVNET"]["STAGE_WITH_DCN"] == [False, True, True, True]
    reloaded = load_config(write(tmp_path / "dumped.yaml", text))
    assert reloaded == cfg
    assert reloaded.MODEL.VOVNET.STAGE_WITH_DCN == (False, True, True, True)


def test_to_dict_copy_and_pickle() -> None:
    cfg = load_config(CONFIGS / "centermask_lite_V_19_eSE_FPN_ms_4x.yaml")
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["MODEL"]) is dict and type(plain["MODEL"]["FCOS"]) is dict
    assert plain == cfg
    for clone in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert isinstance(clone, CfgNode) and isinstance(clone.MODEL, CfgNode)
        assert clone == cfg and clone.is_frozen()


def test_yaml_alias_bombs_are_refused_quickly(tmp_path: Path) -> None:
    """'Billion laughs': nine levels of nine aliases would expand to 387 million strings."""
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 700
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"aliases \(\*a0\) are not supported"):
        load_config(path)
    assert time.perf_counter() - start < 1.0


def test_pipes_deep_nesting_large_files_and_base_fan_out_are_refused(tmp_path: Path) -> None:
    """What would hang (a pipe as _BASE_), end in a RecursionError (200,000 nested brackets), read a
    huge file or read millions of bases is refused with the file's name."""
    import os

    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "uses_pipe.yaml").write_text("_BASE_: pipe.yaml\n")
    with pytest.raises(ConfigError, match=r"pipe\.yaml' is not a regular file \(a named pipe\).*named by _BASE_"):
        load_config(tmp_path / "uses_pipe.yaml")
    (tmp_path / "deep.yaml").write_text("MODEL: " + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml' as YAML: .*nested more than 100 levels deep"):
        load_config(tmp_path / "deep.yaml")
    with open(tmp_path / "huge.yaml", "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(ConfigError, match=r"huge\.yaml' is larger than a config file can be"):
        load_config(tmp_path / "huge.yaml")
    for level in range(8):  # each file names the next one's base ten times: 10^8 reads
        (tmp_path / f"fan{level}.yaml").write_text("_BASE_: [" + ", ".join([f"fan{level + 1}.yaml"] * 10) + "]\n")
    (tmp_path / "fan8.yaml").write_text("MODEL: {DEVICE: cpu}\n")
    with pytest.raises(ConfigError, match="reads more than 64 files"):
        load_config(tmp_path / "fan0.yaml")


# ---- value ranges, checked when a config loads -----------------------------------------------------------------


ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml")) + ["../sample/" + p.name
                                                               for p in (CONFIGS.parent / "sample").glob("*.yaml")]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_shipped_config_is_in_range(name: str) -> None:
    load_config(CONFIGS / name)  # raises if a value is out of range


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("INPUT.MIN_SIZE_TEST", "-5", "INPUT.MIN_SIZE_TEST = -5 is out of range: must be in [0, 16384]"),
        ("INPUT.MAX_SIZE_TEST", "0", "INPUT.MAX_SIZE_TEST = 0 is out of range: must be in [1, "),
        ("INPUT.MIN_SIZE_TEST", "100000", "INPUT.MIN_SIZE_TEST = 100000 is out of range"),
        ("INPUT.FORMAT", "XYZ", "INPUT.FORMAT = 'XYZ' is out of range: must be one of 'BGR', 'RGB'"),
        ("INPUT.MIN_SIZE_TRAIN", "(0, 800)", "INPUT.MIN_SIZE_TRAIN = (0, 800) is out of range"),
        ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "uniform", "INPUT.MIN_SIZE_TRAIN_SAMPLING = 'uniform' is out of range"),
        ("INPUT.RANDOM_FLIP", "diagonal", "INPUT.RANDOM_FLIP = 'diagonal' is out of range"),
        ("MODEL.PIXEL_STD", "[57.4, 0.0, 57.1]", "MODEL.PIXEL_STD = [57.4, 0.0, 57.1] is out of range"),
        ("MODEL.PIXEL_STD", "[1.0, 1.0]", "MODEL.PIXEL_STD = [1.0, 1.0] is out of range: must be 3 values, each > 0"),
        ("MODEL.PIXEL_MEAN", "[103.5, 116.3, 1e999]", "MODEL.PIXEL_MEAN = [103.5, 116.3, inf] is out of range"),
        ("MODEL.FCOS.PRE_NMS_TOPK_TEST", "-1", "MODEL.FCOS.PRE_NMS_TOPK_TEST = -1 is out of range: must be >= 1"),
        ("MODEL.FCOS.POST_NMS_TOPK_TEST", "0", "MODEL.FCOS.POST_NMS_TOPK_TEST = 0 is out of range: must be in [1, 10000]"),
        ("MODEL.FCOS.POST_NMS_TOPK_TEST", "1000000000", "must be in [1, 10000]"),
        ("MODEL.FCOS.INFERENCE_TH_TEST", "1.0", "MODEL.FCOS.INFERENCE_TH_TEST = 1.0 is out of range: must be in [0, 1)"),
        ("MODEL.FCOS.INFERENCE_TH_TEST", "-0.1", "MODEL.FCOS.INFERENCE_TH_TEST = -0.1 is out of range"),
        ("MODEL.FCOS.NMS_TH", "1.5", "MODEL.FCOS.NMS_TH = 1.5 is out of range: must be in [0, 1]"),
        ("MODEL.FCOS.NUM_CLASSES", "0", "MODEL.FCOS.NUM_CLASSES = 0 is out of range: must be >= 1"),
        ("MODEL.FCOS.FPN_STRIDES", "[8, 16, 0, 64, 128]", "MODEL.FCOS.FPN_STRIDES = [8, 16, 0, 64, 128] is out of range"),
        ("MODEL.FCOS.PRIOR_PROB", "0.0", "MODEL.FCOS.PRIOR_PROB = 0.0 is out of range: must be in (0, 1)"),
        ("MODEL.ROI_HEADS.NUM_CLASSES", "-2", "MODEL.ROI_HEADS.NUM_CLASSES = -2 is out of range"),
        ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "0", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 0 is out of range"),
        ("MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "-1", "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = -1 is out"),
        ("MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "3", "MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 3 is out of range: must be a power"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0", "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 0 is out of range"),
        ("MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", "2.0", "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 2.0 is out"),
        ("MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", "-1", "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = -1 is"),
        ("MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "1.5", "INSTANCES_CONFIDENCE_THRESH = 1.5 is out"),
        ("TEST.DETECTIONS_PER_IMAGE", "-1", "TEST.DETECTIONS_PER_IMAGE = -1 is out of range"),
        ("TEST.EVAL_PERIOD", "-1", "TEST.EVAL_PERIOD = -1 is out of range"),
        ("DATALOADER.NUM_WORKERS", "-1", "DATALOADER.NUM_WORKERS = -1 is out of range"),
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH = 0 is out of range"),
        ("SOLVER.BASE_LR", "-0.01", "SOLVER.BASE_LR = -0.01 is out of range"),
        ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER = 0 is out of range"),
    ],
)
def test_out_of_range_values_are_refused_with_the_key_and_range(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(CONFIGS / "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml", [key, value])


def test_range_errors_name_where_the_value_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"_BASE_: {CONFIGS / 'Base-CenterMask-VoVNet.yaml'}\nINPUT:\n  MIN_SIZE_TEST: -1\n")
    with pytest.raises(ConfigError, match=r"INPUT.MIN_SIZE_TEST = -1 is out of range.*c\.yaml"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="command-line overrides"):
        load_config(CONFIGS / "Base-CenterMask-VoVNet.yaml", ["INPUT.MIN_SIZE_TEST", "-1"])


def test_zero_test_size_still_means_no_resize() -> None:
    assert load_config(CONFIGS / "Base-CenterMask-VoVNet.yaml", ["INPUT.MIN_SIZE_TEST", "0"]).INPUT.MIN_SIZE_TEST == 0


def test_config_text_loads_what_a_dump_holds():
    """An exported model's config metadata (a dump: no _BASE_) loads back to the same config."""
    from centermask2.config import load_config_text

    cfg = load_config(CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml")
    again = load_config_text(cfg.dump(), "the config in m.onnx", ["MODEL.DEVICE", "cpu"])
    assert again == load_config(CONFIGS / "centermask_V_39_eSE_FPN_ms_3x.yaml", ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ConfigError, match="the config in m.onnx names _BASE_"):
        load_config_text("_BASE_: other.yaml\n", "the config in m.onnx")
    with pytest.raises(ConfigError, match="the config in m.onnx must be a mapping"):
        load_config_text("- 1\n", "the config in m.onnx")
    with pytest.raises(ConfigError, match="the config in m.onnx"):
        load_config_text("MODEL:\n  FCOS:\n    NMS_TH: 7.0\n", "the config in m.onnx")
    assert load_config_text("", "empty") == load_config_text("{}", "empty")
