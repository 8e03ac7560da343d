"""The golden comparison fails where the README's fidelity table says it would (tests/golden.py)."""

import copy
import json

import pytest

from golden import CASES, LITE, TIERS, assert_results_match


@pytest.fixture(scope="module")
def expected():
    return json.loads((CASES[LITE] / "coco_instances_results.json").read_text())


def test_upstream_against_itself_passes_every_tier(expected):
    for tier in TIERS:
        r = assert_results_match(expected, copy.deepcopy(expected), tier)
        assert r["unmatched"] == 0 and r["box_diff_max"] == 0 and r["mask_iou_min"] == 1.0


@pytest.mark.parametrize(("change", "tier", "what"), [
    (lambda rs: rs[0].update(score=rs[0]["score"] + 5e-4), "torch", "score_diff_max"),
    (lambda rs: rs[0].update(mask_score=rs[0]["mask_score"] + 5e-3), "runtime", "mask_score_diff_max"),
    (lambda rs: rs[0]["bbox"].__setitem__(0, rs[0]["bbox"][0] + 0.05), "torch", "box_diff_max"),
    (lambda rs: rs.pop(0), "runtime", "unmatched"),  # the best detection missing: not a near-tie
])
def test_a_difference_beyond_the_tier_fails(expected, change, tier, what):
    actual = copy.deepcopy(expected)
    change(actual)
    with pytest.raises(AssertionError, match=f"{tier} tier: {what} = "):
        assert_results_match(expected, actual, tier)


def test_a_swap_at_the_cut_off_is_a_near_tie(expected):
    """The lowest-scoring detection of an image (at the top-k cut-off) may be missing or replaced."""
    actual = copy.deepcopy(expected)
    image = actual[0]["image_id"]
    lowest = min((r for r in actual if r["image_id"] == image), key=lambda r: r["score"])
    actual.remove(lowest)
    assert assert_results_match(expected, actual, "torch")["unmatched"] == 0
