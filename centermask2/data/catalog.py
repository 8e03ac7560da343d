"""Which images to run: a folder, a COCO annotation file, or a registered dataset.

:func:`list_images` gives the same list (ids, file names, order) to every stage, so results of
the PyTorch path, ONNX Runtime and the offline pipeline line up image by image.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, MissingFileError
from ..fileio import path_inside, read_json

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "list_images",
    "DATASETS",
    "resolve_dataset",
    "PANOPTIC_DATASETS",
    "PanopticDatasetPaths",
    "resolve_panoptic_dataset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One input image: COCO id, file name (relative to the images folder) and full path."""

    image_id: int
    file_name: str
    path: Path


def list_images(images_dir: str | os.PathLike, coco_json: str | os.PathLike | None = None) -> list[ImageRecord]:
    """The images to run on.

    With a COCO annotation file, its ``images`` entries in file order (``file_name`` relative to
    ``images_dir``); all must exist, ids and file names must be unique, and no file name may
    leave ``images_dir`` (absolute, ``..``). Without one, every image file in ``images_dir`` sorted by
    name, with ``image_id = int(stem)`` when every stem is a number (COCO file names), else 1..N.

    Raises:
        MissingFileError: the folder, the annotation file or a listed image does not exist.
        InputError: the annotation file is not COCO JSON, repeats an id or a file name, or names a
            file outside ``images_dir`` (such entries are never opened).
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise MissingFileError(f"images folder not found: {str(root)!r}")
    if coco_json is not None:
        path = Path(coco_json)
        data = read_json(path, "COCO annotation file", dict)
        if not isinstance(data.get("images"), list):
            raise InputError(f"{str(path)!r} is not a COCO annotation file (no 'images' list)")
        try:
            entries = [(im["id"], im["file_name"]) for im in data["images"]]
        except (KeyError, TypeError) as exc:
            raise InputError(
                f"{str(path)!r}: an 'images' entry lacks a numeric 'id' or a 'file_name' ({type(exc).__name__}: {exc})"
            ) from None
        for image_id, _ in entries:
            if type(image_id) is not int:  # 1.5 would silently become image 1, "1" would never match a result
                raise InputError(f"{str(path)!r}: image id {image_id!r:.40} is not an integer; every 'images' entry needs a "
                                 "numeric 'id' (an integer) and a 'file_name'")
        records = [ImageRecord(i, name, path_inside(root, name, f"{str(path)!r}: image {i}'s file_name"))
                   for i, name in entries]
        for label, values in (("image id", [r.image_id for r in records]), ("file_name", [r.file_name for r in records])):
            repeated = sorted(str(v) for v, n in Counter(values).items() if n > 1)
            if repeated:
                raise InputError(
                    f"{str(path)!r} lists the {label}(s) {', '.join(repeated[:10])} more than once; every image "
                    "needs its own id and file (their detections would be mixed up)"
                )
        missing = [r.file_name for r in records if not r.path.is_file()]
        if missing:
            odd = [name for name in missing if (root / name).exists()]  # a folder, a named pipe, a device
            if odd:
                raise InputError(
                    f"{len(odd)} image(s) listed in {str(path)!r} are not regular files in {str(root)!r} (folders, "
                    f"named pipes or devices, which could block the run forever): {', '.join(odd[:10])}"
                    f"{' ...' if len(odd) > 10 else ''}; replace them with the image files"
                )
            raise MissingFileError(
                f"{len(missing)} image(s) listed in {str(path)!r} are not in {str(root)!r}: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        return records
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise MissingFileError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r}")
    numeric = all(p.stem.isdigit() for p in files)
    return [ImageRecord(int(p.stem) if numeric else i + 1, p.name, p) for i, p in enumerate(files)]


#: detectron2's COCO layout under the dataset root: name -> (image folder, annotation file)
DATASETS = {
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}


def resolve_dataset(name: str, root: str | os.PathLike | None = None) -> tuple[str, str]:
    """Image folder and annotation file of a registered dataset, detectron2 style.

    The root is ``root``, else ``$DETECTRON2_DATASETS``, else ``./datasets``; e.g.
    ``coco_2017_val`` -> ``<root>/coco/val2017`` and ``<root>/coco/annotations/instances_val2017.json``.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} (or pass --images/--coco-json)")
    base = Path(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    images, ann = (base / p for p in DATASETS[name])
    if not images.is_dir() or not ann.is_file():
        raise MissingFileError(
            f"dataset {name!r} expects {str(images)!r} and {str(ann)!r}; set DETECTRON2_DATASETS to the folder that "
            "holds coco/ (see the README's walkthrough)"
        )
    return str(images), str(ann)


@dataclass(frozen=True)
class PanopticDatasetPaths:
    """Where a COCO panoptic dataset's files are (detectron2's ``coco_2017_*_panoptic`` layout)."""

    images: Path
    #: COCO instances annotations (bbox / segm ground truth)
    instances_json: Path
    #: COCO panoptic annotations and their PNG folder
    panoptic_json: Path
    panoptic_root: Path
    #: semantic ground truth made by tools/prepare_panoptic_stuff.py (may not exist yet)
    sem_seg_root: Path


#: detectron2's COCO panoptic layout under the dataset root:
#: name -> (images, instances JSON, panoptic JSON, panoptic PNGs, panoptic_stuff PNGs)
PANOPTIC_DATASETS = {
    "coco_2017_val_panoptic": (
        "coco/val2017", "coco/annotations/instances_val2017.json", "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_val2017", "coco/panoptic_stuff_val2017",
    ),
    "coco_2017_train_panoptic": (
        "coco/train2017", "coco/annotations/instances_train2017.json", "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_train2017", "coco/panoptic_stuff_train2017",
    ),
}


def resolve_panoptic_dataset(name: str, root: str | os.PathLike | None = None) -> PanopticDatasetPaths:
    """The files of a registered COCO panoptic dataset, detectron2 style (root as :func:`resolve_dataset`).

    Only the panoptic annotations (JSON and PNG folder) must exist; the caller checks what else it uses.

    Raises:
        InputError: unknown name.
        MissingFileError: the panoptic JSON or PNG folder is not there.
    """
    if name not in PANOPTIC_DATASETS:
        raise InputError(
            f"unknown panoptic dataset {name!r}; known: {', '.join(sorted(PANOPTIC_DATASETS))} (or pass "
            "--panoptic-json/--panoptic-root)"
        )
    base = Path(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    paths = PanopticDatasetPaths(*(base / p for p in PANOPTIC_DATASETS[name]))
    if not paths.panoptic_json.is_file() or not paths.panoptic_root.is_dir():
        raise MissingFileError(
            f"dataset {name!r} expects {str(paths.panoptic_json)!r} and {str(paths.panoptic_root)!r}; set "
            "DETECTRON2_DATASETS to the folder that holds coco/ (COCO's panoptic_annotations_trainval2017.zip "
            "unpacked there)"
        )
    return paths
