"""Stage 3 of the offline ``.bin`` pipeline: raw output bins -> COCO results (-> metrics).

Reads ``RAW/<stem>_<k>.bin`` (layout: :mod:`.layout`) for every image of
``BINS/bin_info.json``, rebuilds each image's detections, maps them back to the original image
with :func:`centermask2.modeling.postprocessing.detector_postprocess` (boxes scaled from the resized size
recorded at preprocessing to the original size, masks pasted) and converts them to COCO result
records, exactly as the in-process path (:func:`centermask2.engine.loop.run_inference`) does.

Any engine can produce the outputs (``tester.py --bins`` with ONNX Runtime, ais_bench on an
Ascend OM, a TensorRT runner, ...) as long as it writes, per image and per output ``k`` in model
order, the raw little-endian C-order bytes of the ``[1, ...]`` tensor. The layout comes from
``RAW/manifest.json`` when present, else from the ``.onnx`` model (see :func:`resolve_manifest`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..contract import (
    PANOPTIC_OUTPUT_NAMES,
    SEM_SEG_OUTPUT,
    PanopticSettings,
    check_detections,
    model_output_specs,
)
from ..data.categories import load_coco_dict
from ..errors import InputError, ItemError, MissingFileError
from ..evaluation.coco import instances_to_coco_json
from ..modeling.postprocessing import detector_postprocess
from ..summary import StageSummary
from .layout import MANIFEST, BinImage, BinInfo, Manifest, output_path, read_array

__all__ = [
    "REQUIRED_OUTPUTS",
    "OutputProblem",
    "BinPostprocessSummary",
    "resolve_manifest",
    "find_output_problems",
    "images_without_bins",
    "format_problems",
    "read_image_outputs",
    "decode_image_outputs",
    "postprocess_bins",
]

logger = logging.getLogger(__name__)

#: outputs stage 3 cannot do without; ``masks`` and ``mask_scores`` are used when present
REQUIRED_OUTPUTS = ("boxes", "scores", "classes", "num_detections")


@dataclass(frozen=True)
class OutputProblem:
    """A missing or unusable output (or an image of the dataset that has no bins at all).

    Attributes:
        name: the file (e.g. ``000000000139_3.bin``) or image concerned.
        reason: what is wrong, e.g. ``missing`` or ``1200 bytes, expected 9800``.
        stem: the bin stem of the image (None for an image that was never preprocessed).
    """

    name: str
    reason: str
    stem: str | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def resolve_manifest(
    outputs_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    index_base: int | None = None,
) -> Manifest:
    """The layout of the output bins in ``outputs_dir``.

    ``outputs_dir/manifest.json`` when it exists (``index_base``, if given, must agree with
    it); otherwise built from ``model`` (an ``.onnx`` exported by this toolkit): names and
    dtypes from its graph outputs, per-image shapes from the graph or its ``max_detections``
    metadata (``boxes`` [1, K, 4] float32, ``scores`` [1, K] float32, ``classes`` [1, K] int64,
    ``masks`` [1, K, 28, 28] float32, ``mask_scores`` [1, K] float32, ``num_detections`` [1]
    int64), with ``index_base`` (default 0).

    Raises:
        MissingFileError: no manifest and no model.
        InputError: the manifest lacks a required output, or ``index_base`` contradicts it.
    """
    folder = Path(outputs_dir)
    if not folder.is_dir():
        raise MissingFileError(f"outputs folder not found: {str(folder)!r}")
    if (folder / MANIFEST).is_file():
        manifest = Manifest.load(folder)
        if index_base is not None and index_base != manifest.index_base:
            raise InputError(
                f"{str(folder / MANIFEST)!r} says the output bins are numbered from {manifest.index_base}, "
                f"not {index_base}; drop --index-base (the manifest is authoritative)"
            )
        source = str(folder / MANIFEST)
    elif model is not None:
        manifest = Manifest(outputs=model_output_specs(model), index_base=0 if index_base is None else index_base,
                            model=os.fspath(model))
        source = f"{os.fspath(model)} (no {MANIFEST} in {str(folder)!r})"
    else:
        raise MissingFileError(
            f"{str(folder)!r} has no {MANIFEST}; pass --model model.onnx so that the output layout can be read "
            "from the model (and --index-base 1 if the files are numbered from 1)"
        )
    if manifest.index_base not in (0, 1):
        raise InputError(f"index base must be 0 or 1, got {manifest.index_base} ({source})")
    names = [o.name for o in manifest.outputs]
    missing = [n for n in REQUIRED_OUTPUTS if n not in names]
    if missing:
        raise InputError(f"the output layout from {source} has no {missing} output (it lists {names})")
    logger.info(
        "Output layout from %s: %s, files numbered from %d",
        source, ", ".join(f"{o.name} {o.dtype}{o.shape}" for o in manifest.outputs), manifest.index_base,
    )
    return manifest


def find_output_problems(outputs_dir: str | os.PathLike, info: BinInfo, manifest: Manifest) -> list[OutputProblem]:
    """Every output bin of ``info``'s images that is missing or has the wrong size (stat only)."""
    folder = Path(outputs_dir)
    problems: list[OutputProblem] = []
    for im in info.images:
        for spec in manifest.outputs:
            path = output_path(folder, im.stem, spec.index, manifest.index_base)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(OutputProblem(path.name, "missing", im.stem))
                continue
            if size != spec.nbytes:
                problems.append(OutputProblem(
                    path.name, f"{size} bytes, expected {spec.nbytes} ({spec.name} {spec.dtype} {spec.shape}): "
                    "truncated or not this output", im.stem,
                ))
    return problems


def images_without_bins(info: BinInfo, coco_json: str | os.PathLike | Mapping[str, Any]) -> list[OutputProblem]:
    """Images of a COCO annotation file that ``info`` does not list (never preprocessed)."""
    data = load_coco_dict(coco_json)
    have = {im.image_id for im in info.images}
    return [
        OutputProblem(str(im.get("file_name", im["id"])), f"image id {im['id']} has no bin in the info file")
        for im in data.get("images", [])
        if int(im["id"]) not in have
    ]


def format_problems(problems: Sequence[OutputProblem], limit: int = 20) -> str:
    """One line per problem, the first ``limit`` of them, then a count of the rest."""
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def read_image_outputs(outputs_dir: str | os.PathLike, stem: str, manifest: Manifest) -> dict[str, np.ndarray]:
    """One image's raw outputs by name, each of its manifest shape ``[1, ...]``.

    Raises:
        MissingFileError / ItemError: a bin is missing or has the wrong size (see :func:`read_array`).
    """
    folder = Path(outputs_dir)
    return {
        spec.name: read_array(output_path(folder, stem, spec.index, manifest.index_base), spec.dtype, spec.shape)
        for spec in manifest.outputs
    }


def decode_image_outputs(
    raw: Mapping[str, np.ndarray], im: BinImage, *, mask_threshold: float = 0.5, source: str = "",
    num_classes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Detections of one image in original-image pixels, from its raw outputs.

    Args:
        raw: ``boxes`` [1, K, 4] xyxy in resized-image pixels, ``scores`` [1, K], ``classes``
            [1, K], ``num_detections`` [1], optional ``masks`` [1, K, M, M], ``mask_scores`` [1, K]
            and ``sem_seg`` [1, C, H, W].
        im: the image (resized and original sizes).
        mask_threshold: binarization threshold of the pasted masks.
        source: names the files in error messages.
        num_classes: the model's classes (None: not checked here).

    Returns:
        :func:`detector_postprocess`'s dict: ``boxes`` [N, 4], ``scores`` [N], ``classes`` [N],
        ``masks`` [N, H, W] bool, ``mask_scores`` [N].

    Raises:
        ItemError: the outputs fail :func:`~centermask2.contract.check_detections`: ``num_detections``
            outside [0, K] (corrupt or misnumbered outputs), non-finite boxes, scores or masks of the valid
            rows, classes out of range, a non-finite ``sem_seg``.
    """
    boxes = np.asarray(raw["boxes"]).reshape(-1, 4)
    k = boxes.shape[0]

    def image(name: str) -> np.ndarray:  # the one image's tensor, K rows first where it has them
        value = np.asarray(raw[name])
        if name == SEM_SEG_OUTPUT:
            return value.reshape(value.shape[-3:])
        if name == "masks":
            return value.reshape(k, *value.shape[2:]) if value.size and value.ndim > 2 else value
        return value.reshape(-1) if name == "num_detections" else value.reshape(k, -1).squeeze(-1)

    try:
        one = {name: boxes if name == "boxes" else image(name) for name in raw if name in PANOPTIC_OUTPUT_NAMES}
    except ValueError as exc:  # a layout whose shapes do not fit K rows
        raise ItemError(f"{source or im.stem}: the outputs do not have {k} rows each ({exc}); check the manifest") from None
    n = check_detections(one, num_classes=num_classes, where=source or im.stem, error=ItemError,
                         hint="the output bins are corrupt or numbered differently (check --index-base / the manifest)")

    def rows(name: str) -> torch.Tensor | None:
        return torch.from_numpy(np.ascontiguousarray(one[name][:n])) if name in one else None

    return detector_postprocess(
        rows("boxes"),
        rows("scores"),
        rows("classes"),
        rows("masks"),
        rows("mask_scores"),
        input_hw=(im.resized_height, im.resized_width),
        output_hw=(im.height, im.width),
        mask_threshold=mask_threshold,
    )


@dataclass
class BinPostprocessSummary(StageSummary):
    """What :func:`postprocess_bins` did (times in seconds).

    ``num_images`` counts images turned into results; ``failed`` the images left out because of
    output problems (stem, reason).

    Attributes:
        num_detections: COCO records written.
        read_s, postprocess_s: totals for reading bins and post-processing (+ COCO conversion, + a
            panoptic model's segments and PNGs).
        panoptic: a panoptic model's annotation per image, in image order.
    """

    num_detections: int = 0
    read_s: float = 0.0
    postprocess_s: float = 0.0
    panoptic: list[dict[str, Any]] = field(default_factory=list)

    def format(self) -> str:
        """One line: images, seconds, images/s and per-image times."""
        left = f" ({len(self.failed)} left out)" if self.failed else ""
        return (
            f"{self.num_images} images{left}, {self.num_detections} detections in {self.wall_s:.1f} s, "
            f"{self.images_per_s:.2f} images/s; reading {self.ms_per_image(self.read_s):.1f} ms/image, "
            f"post-processing {self.ms_per_image(self.postprocess_s):.1f} ms/image"
        )


def postprocess_bins(
    outputs_dir: str | os.PathLike,
    info: BinInfo,
    manifest: Manifest,
    contiguous_to_dataset_id: Sequence[int] | Mapping[int, int],
    *,
    skip: Sequence[str] = (),
    mask_threshold: float = 0.5,
    progress: bool = True,
    panoptic: PanopticSettings | None = None,
    output_dir: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], BinPostprocessSummary]:
    """Turn the raw output bins of ``info``'s images into COCO result records; for a panoptic model
    (a ``sem_seg`` output and ``panoptic`` settings) also each image's panoptic segments, their PNGs
    written into ``output_dir`` (:func:`~centermask2.evaluation.panoptic.write_panoptic_image`).

    Args:
        outputs_dir: the ``RAW`` folder.
        info: the images (ids, resized and original sizes) from ``bin_info.json``.
        manifest: the output layout (see :func:`resolve_manifest`).
        contiguous_to_dataset_id: category id of every contiguous class.
        skip: stems to leave out (e.g. those :func:`find_output_problems` reported).
        mask_threshold: binarization threshold of the pasted masks (0.5 upstream).
        progress: tqdm progress bar.
        panoptic, output_dir: a panoptic model's settings and where its PNGs go.

    Returns:
        (COCO result dicts in image order, summary; its ``panoptic`` the panoptic annotations).

    Raises:
        MissingFileError / ItemError: an output bin of an image not in ``skip`` is missing,
            truncated or corrupt; the message names it.
    """
    from tqdm import tqdm

    from ..engine.loop import panoptic_image
    from ..evaluation.panoptic import write_panoptic_image

    if panoptic is not None and SEM_SEG_OUTPUT not in {o.name for o in manifest.outputs}:
        raise InputError(f"panoptic post-processing needs the {SEM_SEG_OUTPUT!r} output, which the output layout lacks")
    num_classes = len(contiguous_to_dataset_id) if not isinstance(contiguous_to_dataset_id, Mapping) else None
    skipped = set(skip)
    summary = BinPostprocessSummary(failed=[(im.stem, "output bins missing or unusable") for im in info.images
                                            if im.stem in skipped])
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    images = [im for im in info.images if im.stem not in skipped]
    for im in tqdm(images, unit="img", disable=not progress, desc="postprocess"):
        t0 = time.perf_counter()
        raw = read_image_outputs(outputs_dir, im.stem, manifest)
        t1 = time.perf_counter()
        base = output_path(outputs_dir, im.stem, 0, manifest.index_base).name
        det = decode_image_outputs(raw, im, mask_threshold=mask_threshold, source=f"{im.stem} ({base}, ...)",
                                   num_classes=num_classes)
        records = instances_to_coco_json(det, im.image_id, contiguous_to_dataset_id)
        results.extend(records)
        if panoptic is not None:
            seg, segments, labels = panoptic_image(det, raw[SEM_SEG_OUTPUT][0], (im.resized_height, im.resized_width),
                                                   (im.height, im.width), panoptic)
            summary.panoptic.append(write_panoptic_image(output_dir or ".", im.image_id, im.file_name, seg, segments,
                                                         labels))
        summary.read_s += t1 - t0
        summary.postprocess_s += time.perf_counter() - t1
        summary.num_images += 1
        summary.num_detections += len(records)
    summary.wall_s = time.perf_counter() - start
    return results, summary
