"""centermask2.offline.postprocess: raw output bins decoded per image, corrupt ones named."""

import numpy as np
import pytest

from centermask2.errors import ItemError
from centermask2.offline.layout import BinImage
from centermask2.offline.postprocess import decode_image_outputs

IMAGE = BinImage(image_id=1, file_name="x.png", stem="x", height=40, width=60, resized_height=20, resized_width=30,
                 bin="x.bin", sizes_bin="image_sizes/x.bin")


def _raw(n=2, k=4):
    boxes = np.zeros((1, k, 4), np.float32)
    boxes[0, :n] = [[1, 1, 10, 10], [2, 3, 20, 15]][:n]
    return {
        "boxes": boxes,
        "scores": np.array([[0.9, 0.8, 0, 0]], np.float32)[:, :k],
        "classes": np.array([[3, 5, 0, 0]], np.int64)[:, :k],
        "masks": np.ones((1, k, 28, 28), np.float32),
        "mask_scores": np.array([[0.7, 0.6, 0, 0]], np.float32)[:, :k],
        "num_detections": np.array([n], np.int64),
    }


def test_decodes_to_original_pixels():
    det = decode_image_outputs(_raw(), IMAGE)
    np.testing.assert_allclose(det["boxes"][0].numpy(), [2, 2, 20, 20])
    assert det["masks"].shape == (2, 40, 60)


@pytest.mark.parametrize("name", ["boxes", "scores", "mask_scores"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_outputs_are_refused_by_name(name, bad):
    raw = _raw()
    raw[name].reshape(-1)[1] = bad
    with pytest.raises(ItemError, match=f"x_0.bin.*{name}.*NaN or infinite"):
        decode_image_outputs(raw, IMAGE, source="x_0.bin")


def test_garbage_past_num_detections_is_ignored():
    raw = _raw()
    raw["scores"][0, 3] = np.nan  # padding rows may hold anything
    assert len(decode_image_outputs(raw, IMAGE)["scores"]) == 2


def test_num_detections_out_of_range():
    raw = _raw()
    raw["num_detections"][0] = 9
    with pytest.raises(ItemError, match="num_detections is 9"):
        decode_image_outputs(raw, IMAGE)
