"""File layout of the offline ``.bin`` pipeline (shared by its three stages).

Input side, written by ``preprocess_inputs_to_bin.py`` into ``BINS/``::

    BINS/<stem>.bin               images input: raw C-order bytes of [1, 3, H, W] in the model's
                                  input dtype (uint8 or float32, little-endian), BGR, resized as
                                  upstream and zero-padded bottom/right to the static size
    BINS/image_sizes/<stem>.bin   image_sizes input: int64 [1, 2] = valid (h, w) inside the bin
    BINS/bin_info.json            everything needed to undo the preprocessing (see BinInfo)
    BINS/bin_info.info            classic text info file: "<index> <bin path> <W> <H>" per line
                                  (W, H = the model's input width and height)
    BINS/bin_settings.json        the run's settings, written when it starts (``--resume`` checks them)

Output side, written by ``tester.py --bins`` (or any engine) into ``RAW/``::

    RAW/<stem>_<k>.bin            output k (model order, k from 0, or from 1 with
                                  --index-base 1), raw C-order bytes of [1, ...]
    RAW/manifest.json             output names, dtypes, per-image shapes, index base
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..contract import OutputSpec, expected_nbytes
from ..errors import InputError, ItemError, MissingFileError
from ..fileio import atomic_write_bytes, atomic_write_json, path_inside, plain_name, read_json

__all__ = [
    "INFO_JSON",
    "INFO_TXT",
    "SETTINGS_JSON",
    "MANIFEST",
    "SIZES_DIR",
    "BinImage",
    "BinInfo",
    "OutputSpec",
    "Manifest",
    "write_array",
    "read_array",
    "expected_nbytes",
    "output_path",
]

INFO_JSON = "bin_info.json"
INFO_TXT = "bin_info.info"
SETTINGS_JSON = "bin_settings.json"
MANIFEST = "manifest.json"
SIZES_DIR = "image_sizes"
FORMAT_VERSION = 1
#: dtypes a manifest may give an output (what engines write for exported models)
OUTPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")


@dataclass
class BinImage:
    """One preprocessed image.

    Attributes:
        image_id: COCO image id.
        file_name: path relative to the images folder.
        stem: bin name without ``.bin`` (unique in the folder).
        height, width: original image size (after EXIF orientation).
        resized_height, resized_width: size after ResizeShortestEdge = valid region of the bin.
        bin: path of the images bin, relative to the info file's folder.
        sizes_bin: path of the image_sizes bin, relative to the info file's folder.
    """

    image_id: int
    file_name: str
    stem: str
    height: int
    width: int
    resized_height: int
    resized_width: int
    bin: str
    sizes_bin: str


@dataclass
class BinInfo:
    """Contents of ``bin_info.json``.

    Attributes:
        dtype: ``"uint8"`` or ``"float32"`` (the model's ``images`` input dtype).
        shape: ``[1, 3, H, W]`` of every images bin.
        input_format: channel order, ``"BGR"``.
        min_size, max_size: the ResizeShortestEdge rule used.
        model: the ``.onnx`` the bins were made for, if any.
        images: one :class:`BinImage` per successfully preprocessed image, in input order.
    """

    dtype: str
    shape: list[int]
    input_format: str
    min_size: int
    max_size: int
    model: str | None = None
    images: list[BinImage] = field(default_factory=list)
    version: int = FORMAT_VERSION

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``bin_info.json`` and ``bin_info.info`` into ``folder`` atomically."""
        folder = Path(folder)
        atomic_write_json(asdict(self), folder / INFO_JSON, indent=1)
        h, w = self.shape[2], self.shape[3]
        lines = [f"{i} {(folder / im.bin).as_posix()} {w} {h}\n" for i, im in enumerate(self.images)]
        atomic_write_bytes("".join(lines).encode("utf-8"), folder / INFO_TXT)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BinInfo:
        """Read a ``bin_info.json`` (or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / INFO_JSON
        data = read_json(path, "bin info file", dict, f"preprocess_inputs_to_bin.py writes BINS/{INFO_JSON}")
        try:
            images = [BinImage(**im) for im in data.pop("images")]
            info = cls(images=images, **data)
        except (TypeError, KeyError, AttributeError) as exc:
            raise InputError(f"{str(path)!r} is not a {INFO_JSON} written by preprocess_inputs_to_bin.py: {exc}") from exc
        # the file may come from another machine: every name it gives must stay inside its folder
        where = f"{str(path)!r}:"
        for im in info.images:
            plain_name(im.stem, f"{where} stem")
            path_inside(path.parent, im.bin, f"{where} bin of {im.stem!r}")
            path_inside(path.parent, im.sizes_bin, f"{where} sizes_bin of {im.stem!r}")
        stems = [im.stem for im in info.images]
        if len(set(stems)) != len(stems):
            dupes = sorted({s for s in stems if stems.count(s) > 1})
            raise InputError(f"{where} lists the stem(s) {dupes[:10]} more than once")
        return info


@dataclass
class Manifest:
    """Contents of ``RAW/manifest.json``: how to read the output bins."""

    outputs: list[OutputSpec]
    index_base: int = 0
    model: str | None = None
    version: int = FORMAT_VERSION
    #: SHA-256 of the model file the outputs came from (``tester.py --bins`` writes it; engines may not)
    model_digest: str | None = None
    #: SHA-256 of the bin_info.json the inputs came from
    inputs_digest: str | None = None

    def save(self, folder: str | os.PathLike) -> None:
        atomic_write_json(asdict(self), Path(folder) / MANIFEST, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        data = read_json(path, "output manifest", dict)
        try:
            outputs = [OutputSpec(**o) for o in data.pop("outputs")]
            manifest = cls(outputs=outputs, **data)
        except (TypeError, KeyError, AttributeError) as exc:
            raise InputError(f"{str(path)!r} is not an output manifest: {exc}") from exc
        for o in manifest.outputs:
            shape_ok = isinstance(o.shape, list) and all(isinstance(d, int) and d > 0 for d in o.shape)
            if o.dtype not in OUTPUT_DTYPES or not shape_ok or not isinstance(o.index, int) or o.index < 0:
                raise InputError(
                    f"{str(path)!r}: output {o.name!r} has dtype {o.dtype!r}, shape {o.shape!r}, index {o.index!r}; "
                    f"expected a dtype of {', '.join(OUTPUT_DTYPES)}, positive integer dims and an index >= 0"
                )
        return manifest


def write_array(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``array``'s raw little-endian C-order bytes to ``path`` atomically (no header)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    atomic_write_bytes(memoryview(arr).cast("B"), path)


def read_array(path: str | os.PathLike, dtype: str | np.dtype, shape: Sequence[int]) -> np.ndarray:
    """Read a raw ``.bin`` of known dtype and shape.

    Raises:
        MissingFileError: the file is missing.
        ItemError: its size is not ``prod(shape) * itemsize`` (truncated or the wrong tensor);
            the message names the file and both sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"missing bin: {str(path)!r}")
    want = expected_nbytes(shape, dtype)
    got = path.stat().st_size
    if got != want:
        raise ItemError(
            f"{str(path)!r} has {got} bytes, expected {want} ({np.dtype(dtype).name} {list(shape)}): "
            "truncated or not this tensor"
        )
    return np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def output_path(folder: str | os.PathLike, stem: str, k: int, index_base: int = 0) -> Path:
    """``folder/<stem>_<k + index_base>.bin``."""
    return Path(folder) / f"{stem}_{k + index_base}.bin"

