"""Everything about inputs: which images and datasets (:mod:`.catalog`), which classes
(:mod:`.categories`; COCO panoptic's in :mod:`.panoptic_categories`), how they become network
input (:mod:`.spec`, :mod:`.transforms`); training annotations and batches (:mod:`.training`),
the generated shapes dataset (:mod:`.shapes`), semantic ground truth from panoptic annotations
(:mod:`.panoptic_stuff`)."""

from .catalog import DATASETS, IMAGE_EXTENSIONS, ImageRecord, list_images, resolve_dataset
from .categories import category_mapping, load_coco_categories
from .spec import InputSpec, parse_hw
from .transforms import (
    get_resize_shape,
    image_size,
    load_and_resize,
    pad_batch,
    preprocess_batch,
    read_image,
    resize_image,
)

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "list_images",
    "resolve_dataset",
    "category_mapping",
    "load_coco_categories",
    "InputSpec",
    "parse_hw",
    "read_image",
    "image_size",
    "get_resize_shape",
    "resize_image",
    "load_and_resize",
    "pad_batch",
    "preprocess_batch",
]
