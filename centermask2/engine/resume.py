"""Resume state of the image -> results stage: per-image outputs persisted as they come."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.catalog import ImageRecord
from ..errors import InputError
from ..fileio import atomic_write_bytes, open_input_file, parse_json_text

__all__ = ["ImageOutput", "PartialResults"]

logger = logging.getLogger(__name__)


@dataclass
class ImageOutput:
    """What the image -> results stage made of one image.

    Attributes:
        records: its COCO result records (instances).
        panoptic: for a panoptic model, its annotation in the panoptic results file
            (:func:`~centermask2.evaluation.panoptic.write_panoptic_image`; its PNGs are already
            written), else None.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    panoptic: dict[str, Any] | None = None

    def to_json(self, image_id: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"image_id": image_id, "records": self.records}
        if self.panoptic is not None:
            entry["panoptic"] = self.panoptic
        return entry


def _describe(theirs: Mapping[str, str], mine: Mapping[str, str], keys: list[str]) -> str:
    def short(v: object) -> str:
        text = str(v)
        return text[:12] + "..." if len(text) > 40 else text

    return "; ".join(f"{k}: {short(theirs.get(k))} then, {short(mine.get(k))} now" for k in keys)


#: the longest line a progress file may have (one image's detections: a few hundred kilobytes)
_MAX_LINE = 64 << 20


def _entry(entry: Any, where: str, number: int, fix: str) -> tuple[int, ImageOutput]:
    """Line ``number`` of a progress file: what :meth:`ImageOutput.to_json` writes, checked."""
    problem = ""
    if not isinstance(entry, dict) or set(entry) - {"image_id", "records", "panoptic"}:
        problem = "is not an image's entry"
    elif type(entry.get("image_id")) is not int:
        problem = "has no integer 'image_id'"
    elif not isinstance(entry.get("records"), list) or not all(
            isinstance(r, dict) and r.get("image_id") == entry["image_id"] for r in entry["records"]):
        problem = "has 'records' that are not this image's result records"
    elif entry.get("panoptic") is not None and not isinstance(entry["panoptic"], dict):
        problem = "has a 'panoptic' entry that is not an object"
    if problem:
        raise InputError(f"{where}: line {number} {problem}; it was not written by this toolkit: {fix}")
    panoptic = entry.get("panoptic")
    return entry["image_id"], ImageOutput(list(entry["records"]), dict(panoptic) if panoptic is not None else None)


class PartialResults:
    """Per-image results of a run in progress, appended to a JSON-lines file as they come.

    A run killed at any point loses at most the image being written; ``load`` ignores a
    half-written last line. :meth:`finish` removes the file once the final results are saved.
    """

    def __init__(self, path: str | os.PathLike, identity: Mapping[str, str]) -> None:
        """``identity`` describes the run (what changes its output: model, config, input rules, image
        list); resuming a file written with another identity is refused, naming what changed."""
        self.path = Path(path)
        self.identity = dict(identity)
        self._file: Any = None

    def load(self) -> dict[int, ImageOutput]:
        """Outputs of the images finished by an earlier run of this run, by image id.

        Reads only what :meth:`start` and :meth:`append` write: a regular file (not a link), whose
        first line is the run's identity, then one complete entry per line; a half-written last line
        (the run was killed there) is ignored.

        Raises:
            InputError: the file holds another run's progress (the message names what changed), has
                no identity line, or has a line this class does not write; resuming from it would
                merge detections of unknown origin.
        """
        done: dict[int, ImageOutput] = {}
        if not os.path.lexists(self.path):
            return done
        fix = "delete it (or run without --resume) to start over, or use another output folder"
        where = repr(str(self.path))
        with open_input_file(self.path, "progress file", hint=fix, follow_links=False) as f:
            number = 0
            while line := f.readline(_MAX_LINE + 1):
                number += 1
                if len(line) > _MAX_LINE:
                    raise InputError(f"{where}: line {number} is longer than a progress line can be ({_MAX_LINE:,} "
                                     f"bytes); it was not written by this toolkit: {fix}")
                try:
                    entry = parse_json_text(line, f"line {number}", "progress entry")
                except InputError as exc:
                    if not line.endswith(b"\n"):
                        logger.warning("ignoring an incomplete line of %s (the run was interrupted there)", self.path)
                        continue
                    raise InputError(f"{where}: {exc}; it was not written by this toolkit: {fix}") from None
                if number == 1:
                    self._check_identity(entry, where, fix)
                    continue
                image_id, output = _entry(entry, where, number, fix)
                done[image_id] = output
        return done

    def _check_identity(self, entry: Any, where: str, fix: str) -> None:
        if not (isinstance(entry, dict) and "identity" in entry):
            raise InputError(
                f"{where} has no run identity on its first line: it was not written by an interrupted run of this "
                f"toolkit, and resuming from it would merge results of unknown origin into this run's: {fix}"
            )
        theirs = entry["identity"] if isinstance(entry["identity"], dict) else {"run": entry["identity"]}
        changed = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
        if changed:
            raise InputError(
                f"{where} holds the progress of another run: its {', '.join(map(str, changed))} "
                f"differ(s) from this one's ({_describe(theirs, self.identity, changed)}); resuming would "
                "mix two runs' detections. Use another output folder or run without --resume"
            )

    def start(self, keep: Mapping[int, ImageOutput]) -> None:
        """Open the file for appending, holding exactly ``keep`` (rewritten atomically)."""
        lines = json.dumps({"identity": self.identity}) + "\n"
        lines += "".join(json.dumps(v.to_json(k)) + "\n" for k, v in keep.items())
        atomic_write_bytes(lines.encode("utf-8"), self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()/close()

    def append(self, record: ImageRecord, output: ImageOutput) -> None:
        self._file.write(json.dumps(output.to_json(record.image_id)) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> None:
        """Close and delete the file (the final results are written)."""
        self.close()
        self.path.unlink(missing_ok=True)
