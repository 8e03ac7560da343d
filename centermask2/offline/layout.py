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

import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..contract import INPUT_DTYPES, OutputSpec, expected_nbytes
from ..errors import InputError, ItemError, MissingFileError
from ..fileio import (
    atomic_write_bytes,
    atomic_write_json,
    check_choice,
    check_input_file,
    check_int,
    check_keys,
    path_inside,
    plain_name,
    read_json,
)

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
#: the largest bin_info.json accepted (about 250,000 images; their bins alone would fill 1.3 TB)
MAX_INFO_BYTES = 64 << 20
#: the largest manifest.json accepted (a few outputs: a few kilobytes)
MAX_MANIFEST_BYTES = 1 << 20
#: the largest side of a bin (H, W), of an image and of a resize rule
MAX_SIDE = 1 << 16
#: the most bytes one output may have per image (a [1, 100, 28, 28] float32 mask output has 313,600)
MAX_OUTPUT_BYTES = 1 << 32
#: channel orders
INPUT_FORMATS = ("BGR", "RGB")
_DIGEST = re.compile(r"[0-9a-f]{64}")


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
        """Read a ``bin_info.json`` (or the folder holding one), validated before anything uses it.

        The file may come from another machine: every value must have the type and range this
        toolkit writes, and every name it gives must stay inside its folder.

        Raises:
            MissingFileError: no such file.
            InputError: not a regular file, too large, not JSON, or a value of the wrong type or
                range (the message names the key and the image), a name that leaves the folder, a
                stem listed twice.
        """
        path = Path(path)
        if path.is_dir():
            path = path / INFO_JSON
        hint = f"preprocess_inputs_to_bin.py writes BINS/{INFO_JSON}"
        data = read_json(path, "bin info file", dict, hint, max_bytes=MAX_INFO_BYTES)
        where = f"{str(path)!r}"
        try:
            check_keys(data, where, {"dtype", "shape", "input_format", "min_size", "max_size", "images"},
                       {"model", "version"})
        except InputError as exc:
            raise InputError(f"{exc}: it is not a {INFO_JSON} written by preprocess_inputs_to_bin.py") from None
        _check_version(data.get("version", FORMAT_VERSION), where)
        check_choice(data["dtype"], "'dtype'", where, INPUT_DTYPES)
        shape = data["shape"]
        if not (isinstance(shape, list) and len(shape) == 4 and shape[:2] == [1, 3]
                and all(type(v) is int and 1 <= v <= MAX_SIDE for v in shape)):
            raise InputError(f"{where}: 'shape' must be a list of 4 positive integers [1, 3, H, W], got {shape!r:.80}")
        check_choice(data["input_format"], "'input_format'", where, INPUT_FORMATS)
        for key in ("min_size", "max_size"):
            check_int(data[key], repr(key), where, minimum=0, maximum=MAX_SIDE)
        if data.get("model") is not None and not isinstance(data["model"], str):
            raise InputError(f"{where}: 'model' must be a path (text) or null, got {data['model']!r:.80}")
        if not isinstance(data["images"], list):
            raise InputError(f"{where}: 'images' must be a list, got {data['images']!r:.80}: it is not a {INFO_JSON} "
                             "written by preprocess_inputs_to_bin.py")
        images = [_bin_image(im, k, shape, path) for k, im in enumerate(data["images"])]
        info = cls(dtype=data["dtype"], shape=list(shape), input_format=data["input_format"], min_size=data["min_size"],
                   max_size=data["max_size"], model=data.get("model"), images=images,
                   version=data.get("version", FORMAT_VERSION))
        stems = [im.stem for im in info.images]
        if len(set(stems)) != len(stems):
            dupes = sorted({s for s in stems if stems.count(s) > 1})
            raise InputError(f"{where}: lists the stem(s) {dupes[:10]} more than once")
        return info


_IMAGE_KEYS = {"image_id", "file_name", "stem", "height", "width", "resized_height", "resized_width", "bin",
               "sizes_bin"}


def _check_version(version: object, where: str) -> None:
    if type(version) is not int or version != FORMAT_VERSION:
        raise InputError(f"{where}: format version {version!r:.40} is not {FORMAT_VERSION}, the one this toolkit reads; "
                         "write it again with this version's scripts")


def _bin_image(im: object, k: int, shape: list[int], path: Path) -> BinImage:
    """Entry ``k`` of a ``bin_info.json``'s ``images``, validated."""
    where = repr(str(path))
    check_keys(im, where, _IMAGE_KEYS, what=f"image entry {k}")
    assert isinstance(im, dict)
    stem = plain_name(im["stem"], f"{where}: stem")  # first: the other messages name the image by it
    label = f"of image {stem!r}"
    check_int(im["image_id"], f"'image_id' {label}", where, minimum=-(1 << 63), maximum=(1 << 63) - 1)
    if not isinstance(im["file_name"], str):
        raise InputError(f"{where}: 'file_name' {label} must be text, got {im['file_name']!r:.80}")
    for key in ("height", "width"):
        check_int(im[key], f"{key!r} {label}", where, minimum=1, maximum=MAX_SIDE)
    for key, limit in (("resized_height", shape[2]), ("resized_width", shape[3])):
        check_int(im[key], f"{key!r} {label}", where, minimum=1, maximum=limit)
    path_inside(path.parent, im["bin"], f"{where}: bin of {stem!r}")
    path_inside(path.parent, im["sizes_bin"], f"{where}: sizes_bin of {stem!r}")
    return BinImage(**im)


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
        """Read a ``manifest.json`` (or the folder holding one), validated before anything uses it.

        Raises:
            MissingFileError: no such file.
            InputError: not a regular file, too large, not JSON, or a value of the wrong type or
                range (the message names the key and the output).
        """
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        data = read_json(path, "output manifest", dict, max_bytes=MAX_MANIFEST_BYTES)
        where = f"{str(path)!r}"
        try:
            check_keys(data, where, {"outputs"}, {"index_base", "model", "version", "model_digest", "inputs_digest"})
        except InputError as exc:
            raise InputError(f"{exc}: it is not an output manifest") from None
        _check_version(data.get("version", FORMAT_VERSION), where)
        check_choice(data.get("index_base", 0), "'index_base'", where, (0, 1))
        if data.get("model") is not None and not isinstance(data["model"], str):
            raise InputError(f"{where}: 'model' must be a path (text) or null, got {data['model']!r:.80}")
        for key in ("model_digest", "inputs_digest"):
            value = data.get(key)
            if value is not None and not (isinstance(value, str) and _DIGEST.fullmatch(value)):
                raise InputError(f"{where}: {key!r} must be a SHA-256 digest (64 hex digits) or null, got {value!r:.80}")
        outputs = data["outputs"]
        if not isinstance(outputs, list) or not outputs:
            raise InputError(f"{where}: 'outputs' must be a non-empty list, got {outputs!r:.80}: it is not an output "
                             "manifest")
        specs = [_output_spec(o, k, where) for k, o in enumerate(outputs)]
        for attribute in ("name", "index"):
            values = [getattr(o, attribute) for o in specs]
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise InputError(f"{where}: lists the output {attribute}(s) {repeated[:10]} more than once")
        return cls(outputs=specs, index_base=data.get("index_base", 0), model=data.get("model"),
                   version=data.get("version", FORMAT_VERSION), model_digest=data.get("model_digest"),
                   inputs_digest=data.get("inputs_digest"))


def _output_spec(o: object, k: int, where: str) -> OutputSpec:
    """Entry ``k`` of a manifest's ``outputs``, validated."""
    check_keys(o, where, {"index", "name", "dtype", "shape"}, what=f"output entry {k}")
    assert isinstance(o, dict)
    name = o["name"]
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: the name of output entry {k} must be non-empty text, got {name!r:.80}")
    label = f"output {name!r}"
    check_int(o["index"], f"the index of {label}", where, minimum=0, maximum=9999)
    check_choice(o["dtype"], f"the dtype of {label}", where, OUTPUT_DTYPES)
    shape = o["shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8 and all(type(d) is int and d > 0 for d in shape)):
        raise InputError(f"{where}: {label} has shape {shape!r:.80}; expected a list of 1 to 8 positive integer dims")
    nbytes = math.prod(shape) * np.dtype(o["dtype"]).itemsize
    if nbytes > MAX_OUTPUT_BYTES:
        raise InputError(f"{where}: {label} has shape {shape}, more than {MAX_OUTPUT_BYTES:,} bytes per image "
                         f"({nbytes:,}); it is damaged or not a manifest of this toolkit's models")
    return OutputSpec(index=o["index"], name=name, dtype=o["dtype"], shape=list(shape))


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
    if not os.path.lexists(path):
        raise MissingFileError(f"missing bin: {str(path)!r}")
    try:
        check_input_file(path, "bin")
    except (InputError, MissingFileError) as exc:  # a folder, a named pipe, a device: this item is unusable
        raise ItemError(str(exc)) from None
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

