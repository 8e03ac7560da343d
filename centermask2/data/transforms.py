"""Inference-time image pre-processing, bit-exact with detectron2's test pipeline.

detectron2 prepares a test image in three steps, reproduced here without importing it:

1. ``read_image``: decode with PIL, undo the EXIF orientation, convert to RGB and flip the
   channels to BGR (``detectron2/data/detection_utils.py::read_image``).
2. ``ResizeShortestEdge`` at ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``: the output shape
   rule is :func:`get_resize_shape`, the pixels come from PIL's bilinear resize
   (:func:`resize_image`, as ``ResizeTransform.apply_image`` for uint8 images).
3. ``GeneralizedRCNN.preprocess_image``: ``(x - mean) / std`` per channel, then zero padding at
   the bottom/right to a multiple of the backbone's size divisibility
   (``ImageList.from_tensors``).

Step 3 has one implementation, split where deployment needs the split: :func:`pad_batch` pads
raw pixels (what exported graphs and ``.bin`` files take) and
:func:`centermask2.modeling.layers.normalize` does ``(x - mean) / std`` inside each image with
zeros in the padding (inside the model, :meth:`CenterMask.normalize`, and inside exported
graphs); :func:`preprocess_batch` is the two together, detectron2's order of results.
This module is numpy and PIL; only :func:`preprocess_batch` needs torch (and the model's
:func:`~centermask2.modeling.layers.normalize`), and imports them when called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, ItemError, MissingFileError

if TYPE_CHECKING:
    import torch

    from .spec import InputSpec

__all__ = [
    "read_image",
    "image_size",
    "get_resize_shape",
    "resize_image",
    "load_and_resize",
    "pad_batch",
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
# EXIF orientations 5-8 transpose the image (swap height and width).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


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
        MissingFileError: ``path`` does not exist.
        InputError: unknown ``format``.
        ItemError: the file is empty / not a decodable image.
    """
    if format not in _SUPPORTED_FORMATS:
        raise InputError(f"Unsupported image format {format!r}; use one of {_SUPPORTED_FORMATS}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"Image file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise ItemError(f"Image file is empty (0 bytes): {path!r}; re-copy or re-export it.")
    try:
        with Image.open(path) as image:
            image = _apply_exif_orientation(image)
            # convert() forces the (lazy) decode, so truncated files fail inside this block.
            rgb = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ItemError(f"{path!r} declares an image too large to decode safely ({exc}); skipped") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ItemError(
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
        raise InputError(f"Image size must be positive, got h={h}, w={w}.")
    if short_edge < 0:
        raise InputError(f"short_edge must be >= 0 (0 disables resizing), got {short_edge}.")
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
        raise InputError(f"resize_image expects an HxW, HxWx1 or HxWx3 image, got shape {img.shape}.")
    if new_h <= 0 or new_w <= 0:
        raise InputError(f"Output size must be positive, got ({new_h}, {new_w}).")
    single_channel = img.ndim == 3 and img.shape[2] == 1
    pil_image = Image.fromarray(img[:, :, 0] if single_channel else np.ascontiguousarray(img))
    out = np.asarray(pil_image.resize((int(new_w), int(new_h)), Image.BILINEAR))
    if single_channel:
        out = out[:, :, None]
    return out


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Original (h, w) of an image after EXIF orientation, reading only its header.

    Agrees with ``read_image(path).shape[:2]`` (same EXIF rule: orientations 5-8 swap h and w; an
    unreadable EXIF block means no rotation).

    Raises:
        ItemError: not a readable image.
    """
    try:
        with Image.open(path) as image:
            w, h = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
            except Exception:  # noqa: BLE001 - read_image ignores a corrupt EXIF block too
                orientation = None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ItemError(f"cannot read the size of image {os.fspath(path)!r}: {exc}") from exc
    if orientation in _TRANSPOSING_ORIENTATIONS:
        h, w = w, h
    return int(h), int(w)


def load_and_resize(path: str | os.PathLike, spec: InputSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image and resize it as upstream's test-time ResizeShortestEdge.

    Returns:
        resized np.ndarray[h, w, 3] uint8 in ``spec.input_format``, and the original (H, W).

    Raises:
        MissingFileError / ItemError: see :func:`read_image`; ItemError also when the resized image
            does not fit ``spec.pad_to``.
    """
    img = read_image(path, format=spec.input_format)
    orig_h, orig_w = img.shape[:2]
    new_h, new_w = get_resize_shape(orig_h, orig_w, spec.min_size, spec.max_size)
    if spec.pad_to is not None and (new_h > spec.pad_to[0] or new_w > spec.pad_to[1]):
        raise ItemError(
            f"{os.fspath(path)!r}: resized to {new_h}x{new_w}, which does not fit the fixed input size "
            f"{spec.pad_to[0]}x{spec.pad_to[1]}; use a larger --pad-to / --input-size or a smaller MAX_SIZE_TEST"
        )
    return resize_image(img, new_h, new_w), (orig_h, orig_w)


def _padded_size(sizes: np.ndarray, size_divisibility: int, pad_to: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) of a batch whose images have valid sizes ``sizes`` [B, 2]: ``pad_to``, or the largest
    image rounded up to a multiple of ``size_divisibility``."""
    max_h, max_w = (int(v) for v in sizes.max(axis=0))
    if pad_to is None:
        d = max(int(size_divisibility), 1)
        return -(-max_h // d) * d, -(-max_w // d) * d
    pad_h, pad_w = (int(v) for v in pad_to)
    if max_h > pad_h or max_w > pad_w:
        raise InputError(
            f"An image of size {max_h}x{max_w} (HxW) does not fit into pad_to={pad_h}x{pad_w}; "
            "resize it smaller (INPUT.MAX_SIZE_TEST) or use a larger fixed input size."
        )
    if size_divisibility > 1 and (pad_h % size_divisibility or pad_w % size_divisibility):
        logger.warning(
            "pad_to=%dx%d is not a multiple of size_divisibility=%d; the model may reject it.",
            pad_h, pad_w, size_divisibility,
        )
    return pad_h, pad_w


def pad_batch(
    images: Sequence[np.ndarray], spec: InputSpec | None = None, *, size_divisibility: int = 32,
    pad_to: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack resized images into one zero-padded batch of raw pixels (bottom/right padding).

    Args:
        images: np.ndarray[h_i, w_i, 3] (uint8 from :func:`load_and_resize`).
        spec: gives ``size_divisibility`` and ``pad_to``; without it, the keyword arguments do.

    Returns:
        batch np.ndarray[B, 3, H, W] in the images' dtype (H, W = ``pad_to`` or the batch maximum
        rounded up to the size divisibility), image_sizes np.ndarray[B, 2] int64 (valid h, w).

    Raises:
        InputError: no images, an image not [H, W, 3], or one larger than ``pad_to``.
    """
    if spec is not None:
        size_divisibility, pad_to = spec.size_divisibility, spec.pad_to
    if len(images) == 0:
        raise InputError("a batch needs at least one image.")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise InputError(
                f"Image {i} must be an np.ndarray[H, W, 3], got {type(img).__name__} {getattr(img, 'shape', None)}."
            )
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
    h, w = _padded_size(sizes, size_divisibility, pad_to)
    batch = np.zeros((len(images), 3, h, w), dtype=images[0].dtype)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    return batch, sizes


def _as_channel_tensor(values: Sequence[float] | torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Return ``values`` as a float32 tensor of shape [3, 1, 1] (per-channel constants)."""
    import torch

    tensor = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if tensor.numel() != 3:
        raise InputError(f"{name} must have 3 values (one per BGR channel), got {tensor.numel()}.")
    return tensor.view(3, 1, 1)


def preprocess_batch(
    images: Sequence[np.ndarray],
    pixel_mean: Sequence[float] | torch.Tensor | np.ndarray,
    pixel_std: Sequence[float] | torch.Tensor | np.ndarray,
    size_divisibility: int,
    pad_to: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize and pad a batch of resized images as detectron2's ``preprocess_image``.

    :func:`pad_batch` then :func:`~centermask2.modeling.layers.normalize`: each image becomes
    ``(x - pixel_mean) / pixel_std`` in float32 (channel order of the image, i.e. BGR for the
    official configs), zero-padded at the bottom/right *after* normalization
    (``ImageList.from_tensors``, pad value 0) to

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
        InputError: empty batch, bad image shape/dtype, or an image larger than ``pad_to``.
    """
    import torch

    from ..modeling.layers import normalize

    mean = _as_channel_tensor(pixel_mean, "pixel_mean")
    std = _as_channel_tensor(pixel_std, "pixel_std")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise InputError(
                f"Image {i} must be an np.ndarray[H, W, 3] uint8, got "
                f"{type(img).__name__} {getattr(img, 'shape', None)} {getattr(img, 'dtype', None)}."
            )
    batch, sizes = pad_batch(images, size_divisibility=size_divisibility, pad_to=pad_to)
    sizes_t = torch.from_numpy(sizes)
    return normalize(torch.from_numpy(batch), sizes_t, mean, std), sizes_t
