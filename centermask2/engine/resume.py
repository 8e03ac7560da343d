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
from ..fileio import atomic_write_bytes

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
        """Outputs of the images finished by an earlier run, by image id."""
        done: dict[int, ImageOutput] = {}
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
                    theirs = entry["identity"] if isinstance(entry["identity"], dict) else {"run": entry["identity"]}
                    changed = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
                    if changed:
                        raise InputError(
                            f"{str(self.path)!r} holds the progress of another run: its {', '.join(changed)} "
                            f"differ(s) from this one's ({_describe(theirs, self.identity, changed)}); resuming would "
                            "mix two runs' detections. Use another output folder or run without --resume"
                        )
                    continue
                try:
                    panoptic = entry.get("panoptic")
                    done[int(entry["image_id"])] = ImageOutput(list(entry["records"]),
                                                               dict(panoptic) if panoptic is not None else None)
                except (KeyError, TypeError, ValueError, AttributeError):
                    logger.warning("ignoring a malformed line of %s", self.path)
        return done

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
