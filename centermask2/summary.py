"""What a stage did: one summary type, extended by each stage with its own timings.

Every stage (image inference, ``.bin`` preprocessing, running bins, post-processing bins)
returns a :class:`StageSummary`: how many items it processed, how many an earlier run had
already done (``--resume``), which failed and why, and how long it took. The scripts print
:meth:`StageSummary.format` and :meth:`StageSummary.format_failures` at the end of a run and
derive the exit code from :attr:`StageSummary.ok`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

__all__ = ["StageSummary"]


@dataclass
class StageSummary:
    """What a stage did (times in seconds).

    Attributes:
        num_images: items processed in this run.
        num_resumed: items kept from an earlier, interrupted run (``--resume``).
        failed: ``(item, reason)`` of every item that could not be processed; the others were.
        wall_s: the whole run.
        model_s: seconds of each model call (stages that run a model); ``batch_sizes`` the real
            images in each call.
        first_result_s: when the first item's result arrived (start-up of workers included).
        executor: the executor's clause (e.g. Ray's actors), empty in this process.
        calls_at_once: model calls that ran at once in this process (OpenVINO's ``--requests``).
    """

    num_images: int = 0
    num_resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    model_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    first_result_s: float = 0.0
    executor: str = ""
    calls_at_once: int = 1

    @property
    def ok(self) -> bool:
        """True when no item failed."""
        return not self.failed

    @property
    def images_per_s(self) -> float:
        """Items processed per second of the whole run (resumed ones excluded)."""
        return self.num_images / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Items per second after the first result (start-up excluded: workers opening the model)."""
        rest = self.wall_s - self.first_result_s
        return (self.num_images - 1) / rest if self.num_images > 1 and rest > 0 else 0.0

    def executor_clause(self) -> str:
        """``". <executor>, first result after X s, then Y images/s"`` where work ran elsewhere, else ``""``."""
        if not self.executor:
            return ""
        return (f". {self.executor}, first result after {self.first_result_s:.1f} s, then "
                f"{self.steady_images_per_s:.2f} images/s")

    @property
    def model_images_per_s(self) -> float:
        """Items per second of model time alone (the model calls' total, divided by the calls that ran
        at once): the rate a stage would reach with reading and post-processing free."""
        total = sum(self.model_s) / max(self.calls_at_once, 1)
        return self.num_images / total if total > 0 else 0.0

    def rate_clause(self) -> str:
        """``"; the model alone X images/s, the run Y% of it"`` (empty without model calls)."""
        if not self.model_s or not self.num_images:
            return ""
        return (f"; the model alone {self.model_images_per_s:.2f} images/s, the run "
                f"{100 * self.images_per_s / self.model_images_per_s:.0f}% of it")

    def per_image_model_ms(self) -> list[float]:
        """Milliseconds per image of every model call."""
        return [1000.0 * t / b for t, b in zip(self.model_s, self.batch_sizes) if b]

    def model_ms_per_image(self) -> float:
        """Median over model calls of call time / real images in it (ms); NaN without calls."""
        per = self.per_image_model_ms()
        return statistics.median(per) if per else float("nan")

    def ms_per_image(self, seconds: float) -> float:
        """``seconds`` (a total over the run) in milliseconds per processed image."""
        return 1000.0 * seconds / max(self.num_images, 1)

    def counts(self, failed_word: str = "failed") -> str:
        """``"N images (M already done, K failed)"`` (``failed_word`` names what happened to failures)."""
        extra = []
        if self.num_resumed:
            extra.append(f"{self.num_resumed} already done")
        if self.failed:
            extra.append(f"{len(self.failed)} {failed_word}")
        return f"{self.num_images} images{' (' + ', '.join(extra) + ')' if extra else ''}"

    def format(self) -> str:
        """One line: counts, seconds, images/s (stages add their own timings)."""
        return f"{self.counts()} in {self.wall_s:.1f} s ({self.images_per_s:.2f} images/s){self.executor_clause()}"

    def format_failures(self, limit: int = 20) -> str:
        """One indented line per failed item (the first ``limit``), then a count of the rest."""
        lines = [f"  {name}: {reason}" for name, reason in self.failed[:limit]]
        if len(self.failed) > limit:
            lines.append(f"  ... and {len(self.failed) - limit} more")
        return "\n".join(lines)
