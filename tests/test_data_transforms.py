"""Tests of centermask2.data.transforms: reading, resizing and batching like detectron2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from centermask2.data import get_resize_shape, preprocess_batch, read_image, resize_image
from golden import CASES, LITE, case_info

GOLDEN_CASES = ["V_39", LITE]


def _golden_images() -> list[tuple[str, str]]:
    out = []
    for case in GOLDEN_CASES:
        info = case_info(case)
        out += [(case, name) for name in sorted(info["num_detections"])]
    return out


# ---------------------------------------------------------------- get_resize_shape


@pytest.mark.parametrize(
    "h, w, short, max_size, expected",
    [
        (300, 451, 800, 1333, (800, 1203)),  # 1202.67 rounds up
        (512, 512, 600, 1000, (600, 600)),
        (400, 600, 600, 1000, (600, 900)),
        (480, 640, 800, 1333, (800, 1067)),  # 1066.67
        (640, 480, 800, 1333, (1067, 800)),  # portrait
        (2, 3, 3, 1000, (3, 5)),  # 4.5 -> 5: int(x + 0.5), not banker's round()
        (100, 1000, 800, 1333, (133, 1333)),  # long side capped: 133.3 x 1333
        (1000, 100, 800, 1333, (1333, 133)),
        (100, 300, 800, 1333, (444, 1333)),  # 444.33 after the cap
        (800, 1333, 800, 1333, (800, 1333)),  # already the right size
        (300, 451, 0, 1333, (300, 451)),  # MIN_SIZE_TEST 0 disables resizing
    ],
)
def test_get_resize_shape(h, w, short, max_size, expected):
    assert get_resize_shape(h, w, short, max_size) == expected


def test_get_resize_shape_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        get_resize_shape(0, 10, 800, 1333)
    with pytest.raises(ValueError, match="short_edge"):
        get_resize_shape(10, 10, -1, 1333)


# ---------------------------------------------------------------- resize vs golden


@pytest.mark.parametrize("case, name", _golden_images())
def test_read_and_resize_bit_exact_with_golden_input(case, name):
    info = case_info(case)
    img = read_image(CASES[case] / "images" / name)
    new_h, new_w = get_resize_shape(*img.shape[:2], info["min_size_test"], info["max_size_test"])
    resized = resize_image(img, new_h, new_w)
    golden = np.load(CASES[case] / "raw_outputs.npz")[f"{int(Path(name).stem)}_input"]
    assert resized.dtype == np.uint8
    assert resized.transpose(2, 0, 1).shape == golden.shape
    np.testing.assert_array_equal(resized.transpose(2, 0, 1), golden)


def test_resize_channels_independent_and_single_channel():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1]  # non-contiguous view, as read_image would give without the copy
    np.testing.assert_array_equal(resize_image(bgr, 20, 31), resize_image(rgb, 20, 31)[:, :, ::-1])
    gray = rgb[:, :, :1]
    out = resize_image(gray, 20, 31)
    assert out.shape == (20, 31, 1)
    np.testing.assert_array_equal(out[:, :, 0], resize_image(rgb[:, :, 0], 20, 31))
    with pytest.raises(TypeError, match="uint8"):
        resize_image(rgb.astype(np.float32), 20, 31)


# ---------------------------------------------------------------- read_image


def _two_colour_rgb(h: int = 20, w: int = 40) -> np.ndarray:
    """Left half red, right half blue, top-left pixel green: orientation is checkable."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    arr[:2, :2] = (0, 255, 0)
    return arr


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_applies_exif_orientation(tmp_path, orientation):
    pil = Image.fromarray(_two_colour_rgb())
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "with space" / f"rot {orientation}.png"
    path.parent.mkdir()
    pil.save(path, exif=exif)

    got = read_image(path)
    with Image.open(path) as reopened:
        expected_rgb = np.asarray(ImageOps.exif_transpose(reopened).convert("RGB"))
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, expected_rgb[:, :, ::-1])
    if orientation in (5, 6, 7, 8):
        assert got.shape == (40, 20, 3)
    else:
        assert got.shape == (20, 40, 3)


def test_read_image_orientation_6_rotates_clockwise(tmp_path):
    pil = Image.fromarray(_two_colour_rgb())
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 CW to display"
    path = tmp_path / "cw.png"
    pil.save(path, exif=exif)
    got = read_image(path)  # BGR
    assert got.shape == (40, 20, 3)
    # The left (red) half of the stored image ends up on top, the green corner top-right.
    np.testing.assert_array_equal(got[5, 10], [0, 0, 255])
    np.testing.assert_array_equal(got[35, 10], [255, 0, 0])
    np.testing.assert_array_equal(got[0, 19], [0, 255, 0])


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16"])
def test_read_image_converts_modes_to_bgr(tmp_path, mode):
    rgb = Image.fromarray(_two_colour_rgb())
    if mode == "I;16":
        img = Image.fromarray(np.arange(20 * 40, dtype=np.uint16).reshape(20, 40) * 7)
    else:
        img = rgb.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"img_{mode.replace(';', '')}{suffix}"
    img.save(path, **({"quality": 100} if suffix == ".jpg" else {}))

    got = read_image(path)
    with Image.open(path) as reopened:
        expected = np.asarray(reopened.convert("RGB"))[:, :, ::-1]
    assert got.shape == (20, 40, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    if mode in ("L", "LA"):
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    if mode in ("P", "RGBA"):
        np.testing.assert_array_equal(got[10, 30], [255, 0, 0])  # blue in BGR order
        np.testing.assert_array_equal(got[10, 5], [0, 0, 255])  # red


def test_read_image_rgb_format(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_two_colour_rgb()).save(path)
    np.testing.assert_array_equal(read_image(path, format="RGB"), _two_colour_rgb())
    with pytest.raises(ValueError, match="Unsupported image format"):
        read_image(path, format="YUV")


def test_read_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        read_image(empty)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match="garbage.jpg"):
        read_image(garbage)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        read_image(truncated)


# ---------------------------------------------------------------- preprocess_batch

MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)


def test_preprocess_normalizes_then_pads_with_zeros():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (65, 40, 3), dtype=np.uint8)
    batch, sizes = preprocess_batch([a, b], MEAN, STD, size_divisibility=32)
    assert batch.dtype == torch.float32 and batch.shape == (2, 3, 96, 96)
    assert sizes.dtype == torch.int64 and sizes.tolist() == [[50, 70], [65, 40]]
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    expected_a = (torch.from_numpy(a).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(batch[0, :, :50, :70], expected_a, rtol=0, atol=0)
    # Padding is zero in the normalized space, not -mean/std.
    assert (batch[0, :, 50:, :] == 0).all() and (batch[0, :, :, 70:] == 0).all()
    assert (batch[1, :, 65:, :] == 0).all() and (batch[1, :, :, 40:] == 0).all()


def test_preprocess_divisibility_and_pad_to():
    img = np.full((800, 1203, 3), 7, dtype=np.uint8)
    batch, sizes = preprocess_batch([img], MEAN, STD, size_divisibility=32)
    assert batch.shape == (1, 3, 800, 1216)
    batch, _ = preprocess_batch([img], MEAN, STD, size_divisibility=0)
    assert batch.shape == (1, 3, 800, 1203)
    batch, sizes = preprocess_batch([img], MEAN, STD, size_divisibility=32, pad_to=(1344, 1344))
    assert batch.shape == (1, 3, 1344, 1344) and sizes.tolist() == [[800, 1203]]
    assert (batch[0, :, 800:] == 0).all() and (batch[0, :, :, 1203:] == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        preprocess_batch([img], MEAN, STD, size_divisibility=32, pad_to=(1024, 1024))


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        preprocess_batch([], MEAN, STD, 32)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_batch([np.zeros((4, 4, 3), dtype=np.float32)], MEAN, STD, 32)
    with pytest.raises(ValueError, match="pixel_mean"):
        preprocess_batch([np.zeros((4, 4, 3), dtype=np.uint8)], (1.0, 2.0), STD, 32)


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width x height`` (a decompression bomb when large)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_item_errors(tmp_path):
    """A 70-byte PNG declaring 40000x40000 is named and skipped like any unreadable image."""
    from centermask2.data import image_size
    from centermask2.errors import ItemError

    bomb = _png_declaring(tmp_path / "bomb.png", 40000, 40000)
    assert bomb.stat().st_size < 100
    with pytest.raises(ItemError, match="bomb.png.*too large"):
        read_image(bomb)
    with pytest.raises(ItemError, match="bomb.png"):
        image_size(bomb)
