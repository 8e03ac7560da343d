"""COCO masks received from elsewhere: checked before pycocotools decodes them.

pycocotools trusts its input: a compressed RLE string that does not decode (``"zzzz"``, a truncated
one, counts that do not add up to ``height x width``) makes ``decode`` return uninitialised memory
and ``area`` / ``toBbox`` garbage, without an error. :func:`rle_problems` reads the counts the way
pycocotools' ``rleFrString`` does, in numpy over all masks at once, and says what is wrong with
each; :func:`to_compressed_rle` turns the other forms COCO files use (polygons, uncompressed RLE)
into the compressed RLE that evaluation and drawing use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_MASK_PIXELS", "rle_size", "rle_problems", "polygon_problem", "to_compressed_rle"]

#: most pixels a mask may declare (PIL's decompression-bomb limit for images): decoding one
#: allocates that many bytes
MAX_MASK_PIXELS = 178_956_970
#: counts are 32-bit; a value takes at most 7 characters of 5 bits
_MAX_CHARS_PER_COUNT = 7
#: characters decoded at once (numpy temporaries of a few times 8 bytes each)
_BATCH_CHARS = 1 << 21


def rle_size(segmentation: Any) -> tuple[int, int] | None:
    """(h, w) of an RLE dict's ``size``, or None when it is not two positive integers within
    :data:`MAX_MASK_PIXELS`."""
    size = segmentation.get("size") if isinstance(segmentation, dict) else None
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return None
    if size[0] * size[1] > MAX_MASK_PIXELS:
        return None
    return int(size[0]), int(size[1])


def _uncompressed_problem(counts: list, pixels: int) -> str:
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**32 for c in counts):
        return "its counts must be integers in [0, 2^32)"
    if sum(counts) != pixels:
        return f"its counts add up to {sum(counts)} pixels, not height x width = {pixels}"
    return ""


def rle_problems(segmentations: Sequence[Any]) -> list[str]:
    """What is wrong with each RLE dict (``""`` when it decodes to exactly ``size`` pixels).

    A dict needs ``size`` [h, w] (positive, at most :data:`MAX_MASK_PIXELS` pixels) and ``counts``:
    a compressed string (str or bytes, pycocotools' format) or a list of non-negative run lengths
    (uncompressed); either way the runs must add up to h x w.
    """
    problems = [""] * len(segmentations)
    strings: list[tuple[int, bytes, int]] = []  # (position, counts, h * w)
    for i, seg in enumerate(segmentations):
        size = rle_size(seg)
        if size is None:
            problems[i] = (f"its 'size' must be [height, width], two positive integers of at most {MAX_MASK_PIXELS} "
                           "pixels together")
            continue
        counts = seg.get("counts")
        if isinstance(counts, list):
            problems[i] = _uncompressed_problem(counts, size[0] * size[1])
        elif isinstance(counts, (str, bytes)):
            try:
                raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
            except UnicodeEncodeError:
                problems[i] = "its counts string holds characters pycocotools never writes"
                continue
            strings.append((i, raw, size[0] * size[1]))
        else:
            problems[i] = "its 'counts' must be a string (compressed) or a list of integers (uncompressed)"
    for i, problem in _string_problems(strings):
        problems[i] = problem
    return problems


def _string_problems(strings: list[tuple[int, bytes, int]]) -> list[tuple[int, str]]:
    """Problems of compressed counts strings, decoded together in batches of about
    :data:`_BATCH_CHARS` characters."""
    found: list[tuple[int, str]] = []
    batch: list[tuple[int, bytes, int]] = []
    chars = 0
    for i, raw, pixels in strings:
        if not raw:
            if pixels:
                found.append((i, "its counts string is empty"))
            continue
        batch.append((i, raw, pixels))
        chars += len(raw)
        if chars >= _BATCH_CHARS:
            found += _batch_problems(batch)
            batch, chars = [], 0
    if batch:
        found += _batch_problems(batch)
    return found


def _batch_problems(usable: list[tuple[int, bytes, int]]) -> list[tuple[int, str]]:
    """Problems of non-empty compressed counts strings (see ``rleFrString`` in pycocotools'
    ``maskApi.c``): characters from ``'0'``, 5 bits of value each, bit 0x20 says "more", bit 0x10 of
    a value's last character its sign; from the fourth count on, each adds the count two before it."""
    found: list[tuple[int, str]] = []
    lengths = np.array([len(raw) for _, raw, _ in usable])
    chars = np.frombuffer(b"".join(raw for _, raw, _ in usable), np.uint8).astype(np.int64) - 48
    string_of_char = np.repeat(np.arange(len(usable)), lengths)
    last_char = np.cumsum(lengths) - 1
    bad = np.zeros(len(usable), bool)
    bad_char = (chars < 0) | (chars > 63)
    bad[np.unique(string_of_char[bad_char])] = True
    chars = np.where(bad_char, 0, chars)
    more = (chars & 0x20) != 0
    truncated = more[last_char]  # the last value never ends
    more[last_char] = False  # so that no value runs into the next string
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    width = ends - starts + 1
    too_long = width > _MAX_CHARS_PER_COUNT
    shift = 5 * (np.arange(chars.size) - np.repeat(starts, width))
    chunks = (chars & 0x1F) << np.minimum(shift, 5 * _MAX_CHARS_PER_COUNT)
    values = np.add.reduceat(chunks, starts)
    negative = (chars[ends] & 0x10) != 0
    values = np.where(negative, values - (1 << (5 * np.minimum(width, _MAX_CHARS_PER_COUNT))), values)
    # counts from the 4th on add the count two before (separately over odd and even positions)
    string_of_value = string_of_char[ends]
    first_value = np.searchsorted(string_of_value, np.arange(len(usable)))
    position = np.arange(values.size) - first_value[string_of_value]
    counts = values.copy()
    for parity in (0, 1):
        chain = np.flatnonzero((position % 2 == parity) & (position > 0))  # in string, then position, order
        if not chain.size:
            continue
        summed = np.cumsum(values[chain])
        owner = string_of_value[chain]
        new_string = np.concatenate([[True], owner[1:] != owner[:-1]])
        group_start = np.maximum.accumulate(np.where(new_string, np.arange(chain.size), 0))
        counts[chain] = summed - np.concatenate([[0], summed])[group_start]
    out_of_range = (counts < 0) | (counts >= 2**32)
    value_problem = np.zeros(len(usable), bool)
    value_problem[np.unique(string_of_value[too_long | out_of_range])] = True
    totals = np.add.reduceat(np.where(out_of_range, 0, counts), first_value)
    for j, (i, _, pixels) in enumerate(usable):
        if bad[j]:
            found.append((i, "its counts string holds characters pycocotools never writes"))
        elif truncated[j]:
            found.append((i, "its counts string is truncated"))
        elif value_problem[j]:
            found.append((i, "its counts string decodes to negative or too large run lengths"))
        elif totals[j] != pixels:
            found.append((i, f"its counts add up to {int(totals[j])} pixels, not height x width = {pixels}"))
    return found


def polygon_problem(segmentation: Any) -> str:
    """What is wrong with a polygon segmentation (a list of [x0, y0, x1, y1, ...] lists of finite
    numbers, each of at least 3 points), or ``""``."""
    if not isinstance(segmentation, list):
        return "it is not a list of polygons"
    for poly in segmentation:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "every polygon must be a list of x, y coordinates of at least 3 points"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly):
            return "polygon coordinates must be finite numbers"
    return ""


def to_compressed_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A checked segmentation (polygons, uncompressed or compressed RLE) of an ``height`` x ``width``
    image as compressed RLE with ``counts`` a str (what results files and pycocotools' ``loadRes``
    use). An empty polygon list is an empty mask."""
    import pycocotools.mask as mask_util

    if isinstance(segmentation, list):
        if not segmentation:
            rle = mask_util.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
        else:
            rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": [height, width], "counts": segmentation["counts"]}
    counts = rle["counts"]
    return {"size": [int(height), int(width)], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
