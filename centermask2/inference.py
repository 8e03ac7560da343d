"""Run a backend over a folder of images and produce COCO results, as upstream's test loop does.

The stages are the same for every backend: read (PIL, EXIF, BGR) -> ResizeShortestEdge ->
pad into a uint8 batch -> backend -> :func:`detector_postprocess` per image -> COCO records.
A backend is anything with ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]`` whose
outputs are :data:`centermask2.modeling.OUTPUT_NAMES`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .data.coco_metadata import coco_class_names, coco_contiguous_to_dataset_id
from .data.transforms import get_resize_shape, read_image, resize_image
from .evaluation.coco import instances_to_coco_json, load_coco_categories
from .postprocessing import detector_postprocess
from .utils import atomic_write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "InputSpec",
    "spec_from_metadata",
    "Backend",
    "list_images",
    "DATASETS",
    "resolve_dataset",
    "load_and_resize",
    "pad_batch",
    "parse_hw",
    "category_mapping",
    "InferenceSummary",
    "PartialResults",
    "run_inference",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One input image: COCO id, file name (relative to the images folder) and full path."""

    image_id: int
    file_name: str
    path: Path


@dataclass(frozen=True)
class InputSpec:
    """How images become network input (from the config, or later from an exported model).

    Attributes:
        min_size, max_size: ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST`` (ResizeShortestEdge).
        input_format: ``"BGR"`` or ``"RGB"`` (``INPUT.FORMAT``).
        size_divisibility: pad height/width up to a multiple of this.
        pad_to: fixed (H, W) to pad every image to instead (static-shape models), or None.
    """

    min_size: int
    max_size: int
    input_format: str = "BGR"
    size_divisibility: int = 32
    pad_to: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.pad_to is not None:
            h, w = self.pad_to
            d = max(self.size_divisibility, 1)
            if h % d or w % d:
                raise ValueError(
                    f"pad size {h}x{w} must be a multiple of the model's size divisibility {d} "
                    f"(e.g. {((h + d - 1) // d) * d}x{((w + d - 1) // d) * d})"
                )
            if max(h, w) < self.min_size:
                logger.warning("pad size %dx%d is smaller than MIN_SIZE_TEST=%d", h, w, self.min_size)


def spec_from_metadata(meta: Any, pad_to: tuple[int, int] | None = None) -> InputSpec:
    """The input rules an exported model carries (:class:`~centermask2.export.onnx.ModelMetadata`).

    ``pad_to`` defaults to a static model's input size (None for a dynamic one).
    """
    return InputSpec(
        min_size=meta.min_size,
        max_size=meta.max_size,
        input_format=meta.input_format,
        size_divisibility=meta.size_divisibility,
        pad_to=pad_to if pad_to is not None else meta.input_size,
    )


class Backend(Protocol):
    """Anything that runs the network: ``run({"images", "image_sizes"}) -> outputs by name``."""

    input_dtype: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def parse_hw(text: str | None) -> tuple[int, int] | None:
    """Parse ``"HxW"`` (e.g. ``1344x1344``) into (H, W); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r} is not of the form HxW, e.g. 1344x1344") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size {text!r} must be positive, e.g. 1344x1344")
    return h, w


def list_images(images_dir: str | os.PathLike, coco_json: str | os.PathLike | None = None) -> list[ImageRecord]:
    """The images to run on.

    With a COCO annotation file, its ``images`` entries in file order (``file_name`` relative to
    ``images_dir``); all must exist. Without one, every image file in ``images_dir`` sorted by
    name, with ``image_id = int(stem)`` when every stem is a number (COCO file names), else 1..N.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"images folder not found: {str(root)!r}")
    if coco_json is not None:
        path = Path(coco_json)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {str(path)!r}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError(f"{str(path)!r} is not a COCO annotation file (no 'images' list)")
        records = [ImageRecord(int(im["id"]), str(im["file_name"]), root / im["file_name"]) for im in data["images"]]
        missing = [r.file_name for r in records if not r.path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {str(path)!r} are not in {str(root)!r}: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        return records
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r}")
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
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} (or pass --images/--coco-json)")
    base = Path(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    images, ann = (base / p for p in DATASETS[name])
    if not images.is_dir() or not ann.is_file():
        raise FileNotFoundError(
            f"dataset {name!r} expects {str(images)!r} and {str(ann)!r}; set DETECTRON2_DATASETS to the folder that "
            "holds coco/ (see the README's walkthrough)"
        )
    return str(images), str(ann)


def load_and_resize(path: str | os.PathLike, spec: InputSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image and resize it as upstream's test-time ResizeShortestEdge.

    Returns:
        resized np.ndarray[h, w, 3] uint8 in ``spec.input_format``, and the original (H, W).
    """
    img = read_image(path, format=spec.input_format)
    orig_h, orig_w = img.shape[:2]
    new_h, new_w = get_resize_shape(orig_h, orig_w, spec.min_size, spec.max_size)
    if spec.pad_to is not None and (new_h > spec.pad_to[0] or new_w > spec.pad_to[1]):
        raise ValueError(
            f"{os.fspath(path)!r}: resized to {new_h}x{new_w}, which does not fit the fixed input size "
            f"{spec.pad_to[0]}x{spec.pad_to[1]}; use a larger --pad-to / --input-size or a smaller MAX_SIZE_TEST"
        )
    return resize_image(img, new_h, new_w), (orig_h, orig_w)


def pad_batch(images: Sequence[np.ndarray], spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Stack resized images into one zero-padded uint8 batch (bottom/right padding).

    Args:
        images: np.ndarray[h_i, w_i, 3] uint8.

    Returns:
        batch np.ndarray[B, 3, H, W] uint8 (H, W = ``spec.pad_to`` or the batch maximum rounded
        up to ``spec.size_divisibility``), image_sizes np.ndarray[B, 2] int64 (valid h, w).
    """
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
    if spec.pad_to is not None:
        h, w = spec.pad_to
    else:
        d = max(spec.size_divisibility, 1)
        h, w = (int(-(-v // d) * d) for v in sizes.max(axis=0))
    batch = np.zeros((len(images), 3, h, w), dtype=np.uint8)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    return batch, sizes


def category_mapping(
    coco_json: str | os.PathLike | None, num_classes: int
) -> tuple[list[int], list[str]]:
    """Contiguous class -> dataset category id, and class names.

    From the annotation file when given (sorted category ids, as detectron2), else the 80 COCO
    categories for 80-class models, else identity ids with names ``class_<i>``.
    """
    if coco_json is not None:
        ids, names = load_coco_categories(coco_json)
        if len(ids) != num_classes:
            raise ValueError(
                f"{os.fspath(coco_json)!r} has {len(ids)} categories but the model predicts {num_classes} classes"
            )
        return ids, names
    if num_classes == 80:
        return coco_contiguous_to_dataset_id(), coco_class_names()
    return list(range(num_classes)), [f"class_{i}" for i in range(num_classes)]


@dataclass
class InferenceSummary:
    """What a run did and how long it took (seconds); ``failed`` lists unreadable images and why."""

    num_images: int = 0
    num_detections: int = 0
    preprocess_s: list[float] = field(default_factory=list)
    model_s: list[float] = field(default_factory=list)
    postprocess_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def per_image_model_ms(self) -> list[float]:
        return [1000.0 * t / b for t, b in zip(self.model_s, self.batch_sizes)]

    def format(self) -> str:
        n = max(self.num_images, 1)
        per_img = self.per_image_model_ms()
        median = statistics.median(per_img) if per_img else float("nan")
        failed = f" ({len(self.failed)} unreadable, skipped)" if self.failed else ""
        return (
            f"{self.num_images} images{failed}, {self.num_detections} detections in {self.wall_s:.1f} s "
            f"({self.num_images / max(self.wall_s, 1e-9):.2f} img/s). Per image: model median {median:.1f} ms, "
            f"mean {1000 * sum(self.model_s) / n:.1f} ms; pre-processing {1000 * sum(self.preprocess_s) / n:.1f} ms; "
            f"post-processing {1000 * sum(self.postprocess_s) / n:.1f} ms"
        )


def _batches(items: Sequence[ImageRecord], size: int) -> Iterable[Sequence[ImageRecord]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_inference(
    backend: Backend,
    records: Sequence[ImageRecord],
    spec: InputSpec,
    contiguous_to_dataset_id: Sequence[int],
    *,
    batch_size: int = 1,
    mask_threshold: float = 0.5,
    progress: bool = True,
    on_image: Callable[[ImageRecord, dict[str, torch.Tensor]], None] | None = None,
    done: Mapping[int, list[dict[str, Any]]] | None = None,
    on_results: Callable[[ImageRecord, list[dict[str, Any]]], None] | None = None,
) -> tuple[list[dict[str, Any]], InferenceSummary]:
    """Run ``backend`` over ``records`` and build COCO result records.

    Args:
        backend: see :class:`Backend`.
        records: images (see :func:`list_images`).
        spec: resize / padding rules.
        contiguous_to_dataset_id: category id of every contiguous class.
        batch_size: images per backend call.
        mask_threshold: binarization threshold of pasted masks (0.5 upstream).
        progress: show a tqdm progress bar.
        on_image: optional callback with each image's post-processed detections.
        done: COCO records of images already processed (by image id, e.g. from
            :class:`PartialResults`); those images are not run again.
        on_results: optional callback with each newly processed image's COCO records.

    Returns:
        (COCO result dicts in image order, timing summary).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    summary = InferenceSummary()
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    done = dict(done or {})
    todo = [r for r in records if r.image_id not in done]
    if done:
        logger.info("Resuming: %d of %d image(s) already done", len(records) - len(todo), len(records))
    new: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="inference")
    try:
        for batch in _batches(todo, batch_size):
            t0 = time.perf_counter()
            batch_total = len(batch)
            loaded, readable = [], []
            for rec in batch:
                try:
                    loaded.append(load_and_resize(rec.path, spec))
                    readable.append(rec)
                except (ValueError, OSError) as exc:  # unreadable image: name it, keep going
                    logger.warning("skipping %s: %s", rec.file_name, exc)
                    summary.failed.append((rec.file_name, str(exc)))
            if not readable:
                bar.update(batch_total)
                continue
            batch = readable
            images, sizes = pad_batch([im for im, _ in loaded], spec)
            t1 = time.perf_counter()
            out = backend.run({"images": images, "image_sizes": sizes})
            t2 = time.perf_counter()
            for i, rec in enumerate(batch):
                n = int(out["num_detections"][i])
                det = detector_postprocess(
                    torch.from_numpy(out["boxes"][i, :n]),
                    torch.from_numpy(out["scores"][i, :n]),
                    torch.from_numpy(out["classes"][i, :n]),
                    torch.from_numpy(out["masks"][i, :n]),
                    torch.from_numpy(out["mask_scores"][i, :n]),
                    input_hw=(int(sizes[i, 0]), int(sizes[i, 1])),
                    output_hw=loaded[i][1],
                    mask_threshold=mask_threshold,
                )
                records_i = instances_to_coco_json(det, rec.image_id, contiguous_to_dataset_id)
                new[rec.image_id] = records_i
                if on_results is not None:
                    on_results(rec, records_i)
                summary.num_detections += int(det["boxes"].shape[0])
                if on_image is not None:
                    on_image(rec, det)
            t3 = time.perf_counter()
            summary.preprocess_s.append(t1 - t0)
            summary.model_s.append(t2 - t1)
            summary.postprocess_s.append(t3 - t2)
            summary.batch_sizes.append(len(batch))
            summary.num_images += len(batch)
            bar.update(batch_total)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - start
    for rec in records:  # input order, resumed and new together
        results.extend(done.get(rec.image_id, new.get(rec.image_id, [])))
    return results, summary


class PartialResults:
    """Per-image results of a run in progress, appended to a JSON-lines file as they come.

    A run killed at any point loses at most the image being written; ``load`` ignores a
    half-written last line. :meth:`finish` removes the file once the final results are saved.
    """

    def __init__(self, path: str | os.PathLike, identity: str = "") -> None:
        """``identity`` describes the run (model, input rules); resuming another run's file is refused."""
        self.path = Path(path)
        self.identity = identity
        self._file: Any = None

    def load(self) -> dict[int, list[dict[str, Any]]]:
        """Records of the images finished by an earlier run, by image id."""
        done: dict[int, list[dict[str, Any]]] = {}
        if not self.path.is_file():
            return done
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("ignoring an incomplete line of %s (the run was interrupted there)", self.path)
                    continue
                if isinstance(entry, dict) and "identity" in entry:
                    if entry["identity"] != self.identity:
                        raise ValueError(
                            f"{str(self.path)!r} holds the progress of another run ({entry['identity']}), not of "
                            f"this one ({self.identity}); use another output folder or run without --resume"
                        )
                    continue
                try:
                    done[int(entry["image_id"])] = list(entry["records"])
                except (KeyError, TypeError, ValueError):
                    logger.warning("ignoring a malformed line of %s", self.path)
        return done

    def start(self, keep: Mapping[int, list[dict[str, Any]]]) -> None:
        """Open the file for appending, holding exactly ``keep`` (rewritten atomically)."""
        lines = json.dumps({"identity": self.identity}) + "\n"
        lines += "".join(json.dumps({"image_id": k, "records": v}) + "\n" for k, v in keep.items())
        atomic_write_bytes(lines.encode("utf-8"), self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()/close()

    def append(self, record: ImageRecord, records: list[dict[str, Any]]) -> None:
        self._file.write(json.dumps({"image_id": record.image_id, "records": records}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> None:
        """Close and delete the file (the final results are written)."""
        self.close()
        self.path.unlink(missing_ok=True)
