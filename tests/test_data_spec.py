"""centermask2.data.spec: input rules from a config or from a model, one constructor each."""

import pytest

from centermask2.config import load_config
from centermask2.contract import ModelMetadata
from centermask2.data.spec import InputSpec, parse_hw
from centermask2.errors import InputError
from golden import CONFIGS


def test_parse_hw():
    assert parse_hw("1344x1344") == (1344, 1344)
    assert parse_hw("800*1216") == (800, 1216)
    assert parse_hw(None) is None
    for bad in ("1344", "ax1", "-32x32"):
        with pytest.raises(InputError, match="1344x1344"):
            parse_hw(bad)


def test_pad_size_must_be_a_multiple_of_the_divisibility():
    with pytest.raises(InputError, match="multiple of the model's size divisibility 32 .*1024x1024"):
        InputSpec(min_size=800, max_size=1333, pad_to=(1000, 1000))


def test_from_config_reads_the_backbone_divisibility_without_weights():
    cfg = load_config(CONFIGS / "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml")
    spec = InputSpec.from_config(cfg, pad_to=(1344, 1344))
    assert spec == InputSpec(min_size=600, max_size=1000, input_format="BGR", size_divisibility=32, pad_to=(1344, 1344))
    assert InputSpec.from_config(cfg, size_divisibility=64).size_divisibility == 64


def test_from_metadata_defaults_to_the_static_size():
    meta = ModelMetadata(
        config_yaml="", class_names=[], category_ids=[], pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1],
        input_format="RGB", min_size=600, max_size=1000, size_divisibility=32, dynamic=False,
        input_size=(1344, 1344), batch_size=1, input_dtype="uint8", max_detections=50, output_names=[], version="",
    )
    assert InputSpec.from_metadata(meta) == InputSpec(600, 1000, "RGB", 32, (1344, 1344))
    assert InputSpec.from_metadata(meta, pad_to=(640, 640)).pad_to == (640, 640)
