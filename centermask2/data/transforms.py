"""Inference-time image pre-processing, bit-exact with detectron2's test pipeline.

detectron2 prepares a test image in three steps, reproduced here without importing it:

1. ``read_image``: decode with PIL, undo the EXIF orientation, convert to RGB and flip the
   channels to BGR (``detectron2/data/detection_utils.py::read_image``).
2. ``ResizeShortestEdge`` at ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``: the output shape
   rule is :func:`get_resize_shape`, the pixels come from PIL's bilinear resize
   (:func:`resize_image`, as ``ResizeTransform.apply_image`` for uint8 images).
3. ``GeneralizedRCNN.preprocess_image``: ``(x - mean) / std`` per channel, then zero padding at
   the bottom/right to a multiple of the backbone's size divisibility
   (``ImageList.from_tensors``); :func:`preprocess_batch`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "read_image",
    "get_resize_shape",
    "resize_image",
    "preprocess_batch",
]

logger = logging.getLogger(__name__)

# EXIF tag 0x0112 'Orientation'.
_EXIF_ORIENTATION_TAG = 274

# Pillow >= 9.1 has the ``Image.Transpose`` enum; older versions only the module constants.
_TRANSPOSE = getattr(Image, "Transpose", Image)

# EXIF orientation value -> the PIL transpose that brings the pixels upright. Values 1 and
# anything unknown mean "leave as is". Same table as detectron2's ``_apply_exif_orientation``.
_EXIF_TRANSPOSE = {
    2: _TRANSPOSE.FLIP_LEFT_RIGHT,
    3: _TRANSPOSE.ROTATE_180,
    4: _TRANSPOSE.FLIP_TOP_BOTTOM,
    5: _TRANSPOSE.TRANSPOSE,
    6: _TRANSPOSE.ROTATE_270,
    7: _TRANSPOSE.TRANSVERSE,
    8: _TRANSPOSE.ROTATE_90,
}

_SUPPORTED_FORMATS = ("BGR", "RGB")


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Return ``image`` rotated/flipped according to its EXIF orientation tag.

    Mirrors detectron2's ``_apply_exif_orientation`` (a work-around for Pillow's
    ``ImageOps.exif_transpose`` failing on some files): a missing or unreadable EXIF block
    leaves the image untouched.
    """
    if not hasattr(image, "getexif"):
        return image
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 - corrupt EXIF must not make the image unreadable
        exif = None
    if exif is None:
        return image
    method = _EXIF_TRANSPOSE.get(exif.get(_EXIF_ORIENTATION_TAG))
    if method is None:
        return image
    return image.transpose(method)


def read_image(path: str | os.PathLike, format: str = "BGR") -> np.ndarray:
    """Read an image file the way detectron2's ``read_image`` does at test time.

    The EXIF orientation is applied, any PIL mode (grayscale ``L``, palette ``P``, ``RGBA``,
    ``CMYK``, ...) is converted to RGB with ``PIL.Image.convert`` and, for ``format="BGR"``,
    the channel order is reversed.

    Args:
        path: image file.
        format: ``"BGR"`` (what the official configs' ``INPUT.FORMAT`` asks for) or ``"RGB"``.

    Returns:
        np.ndarray[H, W, 3] uint8, C-contiguous, in the requested channel order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown ``format``, or the file is empty / not a decodable image.
    """
    if format not in _SUPPORTED_FORMATS:
        raise ValueError(f"Unsupported image format {format!r}; use one of {_SUPPORTED_FORMATS}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Image file is empty (0 bytes): {path!r}; re-copy or re-export it.")
    try:
        with Image.open(path) as image:
            image = _apply_exif_orientation(image)
            # convert() forces the (lazy) decode, so truncated files fail inside this block.
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(
            f"Failed to read image {path!r}: {exc}. Check that it is a valid image file "
            "(PNG, JPEG, ...) and not truncated."
        ) from exc
    if format == "BGR":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def get_resize_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output shape of detectron2's ``ResizeShortestEdge`` for a fixed short-edge length.

    The short side is scaled to ``short_edge``; if the long side would then exceed
    ``max_size``, both are scaled down so that the long side equals ``max_size``. Both sides are
    rounded with ``int(x + 0.5)``, exactly as ``ResizeShortestEdge.get_output_shape``.

    Args:
        h, w: input image height and width (pixels, > 0).
        short_edge: target length of the short side (``INPUT.MIN_SIZE_TEST``). ``0`` means
            "no resize" as in detectron2 (which then applies a ``NoOpTransform``); (h, w) is
            returned.
        max_size: cap on the long side (``INPUT.MAX_SIZE_TEST``).

    Returns:
        (new_h, new_w).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"Image size must be positive, got h={h}, w={w}.")
    if short_edge < 0:
        raise ValueError(f"short_edge must be >= 0 (0 disables resizing), got {short_edge}.")
    if short_edge == 0:
        return int(h), int(w)
    size = short_edge * 1.0
    scale = size / min(h, w)
    if h < w:
        new_h, new_w = size, scale * w
    else:
        new_h, new_w = scale * h, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h = new_h * scale
        new_w = new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resize a uint8 image with PIL bilinear, as detectron2's ``ResizeTransform.apply_image``.

    PIL resamples each channel independently, so a BGR array can be passed as is (PIL takes
    it for RGB, which does not change the result).

    Args:
        img: np.ndarray[H, W, 3], [H, W, 1] or [H, W], uint8.
        new_h, new_w: output size.

    Returns:
        np.ndarray with the same layout as ``img`` and spatial size (new_h, new_w), uint8.
    """
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise TypeError(
            f"resize_image expects a uint8 numpy array, got {type(img).__name__} "
            f"with dtype {getattr(img, 'dtype', None)}; convert with img.astype(np.uint8)."
        )
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"resize_image expects an HxW, HxWx1 or HxWx3 image, got shape {img.shape}.")
    if new_h <= 0 or new_w <= 0:
        raise ValueError(f"Output size must be positive, got ({new_h}, {new_w}).")
    single_channel = img.ndim == 3 and img.shape[2] == 1
    pil_image = Image.fromarray(img[:, :, 0] if single_channel else np.ascontiguousarray(img))
    out = np.asarray(pil_image.resize((int(new_w), int(new_h)), Image.BILINEAR))
    if single_channel:
        out = out[:, :, None]
    return out


def _as_channel_tensor(values: Sequence[float] | torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Return ``values`` as a float32 tensor of shape [3, 1, 1] (per-channel constants)."""
    tensor = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if tensor.numel() != 3:
        raise ValueError(f"{name} must have 3 values (one per BGR channel), got {tensor.numel()}.")
    return tensor.view(3, 1, 1)


def preprocess_batch(
    images: Sequence[np.ndarray],
    pixel_mean: Sequence[float] | torch.Tensor | np.ndarray,
    pixel_std: Sequence[float] | torch.Tensor | np.ndarray,
    size_divisibility: int,
    pad_to: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize and pad a batch of resized images as detectron2's ``preprocess_image``.

    Each image becomes ``(x - pixel_mean) / pixel_std`` in float32 (channel order of the
    image, i.e. BGR for the official configs), then all are zero-padded at the bottom/right
    *after* normalization (``ImageList.from_tensors``, pad value 0) to

    * the batch's largest height/width rounded up to a multiple of ``size_divisibility``
      (``size_divisibility <= 1`` means no rounding), or
    * exactly ``pad_to`` = (H, W) when given (a static-shape model's input size).

    Args:
        images: list of np.ndarray[H_i, W_i, 3] uint8.
        pixel_mean, pixel_std: 3 values each (``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``).
        size_divisibility: the backbone's ``size_divisibility`` (32 for FPN models).
        pad_to: optional fixed (H, W) output size.

    Returns:
        batch: Tensor[B, 3, Hp, Wp] float32.
        image_sizes: Tensor[B, 2] int64, the valid (h, w) of every image inside ``batch``.

    Raises:
        ValueError: empty batch, bad image shape/dtype, or an image larger than ``pad_to``.
    """
    if len(images) == 0:
        raise ValueError("preprocess_batch needs at least one image.")
    mean = _as_channel_tensor(pixel_mean, "pixel_mean")
    std = _as_channel_tensor(pixel_std, "pixel_std")
    normalized: list[torch.Tensor] = []
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"Image {i} must be an np.ndarray[H, W, 3] uint8, got "
                f"{type(img).__name__} {getattr(img, 'shape', None)} {getattr(img, 'dtype', None)}."
            )
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        # Same op order and dtype promotion as detectron2: uint8 - float32 -> float32, then divide.
        normalized.append((chw - mean) / std)

    image_sizes = torch.tensor([[t.shape[1], t.shape[2]] for t in normalized], dtype=torch.int64)
    max_h, max_w = (int(v) for v in image_sizes.max(dim=0).values)
    if pad_to is not None:
        pad_h, pad_w = (int(v) for v in pad_to)
        if max_h > pad_h or max_w > pad_w:
            raise ValueError(
                f"An image of size {max_h}x{max_w} (HxW) does not fit into pad_to={pad_h}x{pad_w}; "
                "resize it smaller (INPUT.MAX_SIZE_TEST) or use a larger fixed input size."
            )
        if size_divisibility > 1 and (pad_h % size_divisibility or pad_w % size_divisibility):
            logger.warning(
                "pad_to=%dx%d is not a multiple of size_divisibility=%d; the model may reject it.",
                pad_h,
                pad_w,
                size_divisibility,
            )
    elif size_divisibility > 1:
        stride = int(size_divisibility)
        pad_h = (max_h + stride - 1) // stride * stride
        pad_w = (max_w + stride - 1) // stride * stride
    else:
        pad_h, pad_w = max_h, max_w

    batch = torch.zeros((len(normalized), 3, pad_h, pad_w), dtype=torch.float32)
    for i, t in enumerate(normalized):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return batch, image_sizes
