"""Image reading and inference-time pre-processing."""

from .transforms import get_resize_shape, preprocess_batch, read_image, resize_image

__all__ = ["read_image", "get_resize_shape", "resize_image", "preprocess_batch"]
