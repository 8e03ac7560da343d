"""centermask2.summary: the stage summary every stage extends."""

import math

from centermask2.summary import StageSummary


def test_counts_rates_and_failures():
    s = StageSummary(num_images=4, num_resumed=2, wall_s=2.0, model_s=[0.2, 0.3], batch_sizes=[2, 1])
    assert s.ok and s.images_per_s == 2.0
    assert s.per_image_model_ms() == [100.0, 300.0] and s.model_ms_per_image() == 200.0
    assert s.ms_per_image(1.0) == 250.0
    assert s.format() == "4 images (2 already done) in 2.0 s (2.00 images/s)"
    s.failed = [(f"x{i}.png", "truncated") for i in range(25)]
    assert not s.ok and "25 failed" in s.counts()
    lines = s.format_failures().splitlines()
    assert lines[0] == "  x0.png: truncated" and lines[-1] == "  ... and 5 more" and len(lines) == 21


def test_empty_run():
    s = StageSummary()
    assert s.images_per_s == 0.0 and math.isnan(s.model_ms_per_image()) and s.format_failures() == ""
