"""Pair drawing and label selection for the loop: identical replies are never paired, the ranking puts the
pairs a label would teach most first, and random selection is a seeded subset."""

from __future__ import annotations

import math

import pytest
import torch

from prefloop.rl.selection import distinct_replies, draw_anchor_pair, draw_pair, select_top, usefulness


def test_identical_or_empty_replies_are_never_paired():
    assert draw_pair([" same", "same ", "same"], [1.0, 2.0, 3.0], "spread") is None
    assert draw_pair(["a", "  "], None, "same") is None
    for how in ("same", "spread", "uncertain"):
        i, j = draw_pair(["x", "x", " x", "y"], [0.0, 5.0, -5.0, 1.0], how)
        assert {"x", "y"} == {["x", "x", " x", "y"][k].strip() for k in (i, j)}
    assert distinct_replies(["b", "a", "b ", "", "c"]) == [0, 1, 4]
    # a reply with a NUL (the readers and the app refuse such text) is never paired either
    assert draw_pair(["ok", "bad\x00"], None, "same") is None
    assert distinct_replies(["a\x00", "a", "b"]) == [1, 2]


def test_spread_takes_the_extremes_and_uncertain_the_closest_scores():
    replies = ["a", "b", "c", "d"]
    scores = [0.1, 3.0, -2.0, 0.2]
    assert set(draw_pair(replies, scores, "spread")) == {1, 2}
    assert draw_pair(replies, scores, "spread")[0] == 1  # the higher-scored reply first
    assert set(draw_pair(replies, scores, "uncertain")) == {0, 3}
    assert draw_pair(replies, None, "spread") == (0, 1)  # no reward model yet: the first two distinct
    with pytest.raises(ValueError, match="unknown pair strategy 'best'"):
        draw_pair(replies, scores, "best")


def test_anchor_pair_takes_a_different_reply_of_the_earlier_policy():
    assert draw_anchor_pair(["x", "x"], ["x", "y"]) == (0, 1)
    assert draw_anchor_pair(["", "x"], ["z"]) == (1, 0)
    assert draw_anchor_pair(["x"], [" x", "x"]) is None


def test_disagreement_ranks_the_pair_the_members_disagree_on_first():
    # Pair 0: members agree (all prefer A strongly); pair 1: members split; pair 2: all near 0.5.
    margins = torch.tensor([[4.0, 3.0, 0.1], [4.2, -3.0, -0.1], [3.8, 3.0, 0.0]])
    d = usefulness(margins, "disagreement")
    assert d.argmax().item() == 1 and d[2] < d[1] and d[0] < d[1]
    b = usefulness(margins, "bald")
    assert b.argmax().item() == 1 and b[2].item() == pytest.approx(0.0, abs=1e-3)
    # Uncertainty looks only at the mean prediction: pair 2 (all near 0.5) is the least certain.
    u = usefulness(margins, "uncertainty")
    assert u.argmax().item() == 2 and u[0] < 0.1
    assert u[2].item() == pytest.approx(1.0, abs=1e-2)


def test_bald_is_mutual_information():
    p = torch.tensor([[0.9], [0.3]])
    m = torch.log(p / (1 - p))

    def h(x):
        return -(x * math.log(x) + (1 - x) * math.log(1 - x))

    assert usefulness(m, "bald").item() == pytest.approx(h(0.6) - (h(0.9) + h(0.3)) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="expected .members, pairs."):
        usefulness(torch.zeros(3), "bald")


def test_select_top_is_best_first_and_random_ties_are_seeded():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1])
    assert select_top(scores, 2) == [1, 2]
    assert select_top(scores, 10) == [1, 2, 0, 3]
    flat = usefulness(torch.zeros(1, 50), "random")
    a = select_top(flat, 10, torch.Generator().manual_seed(0))
    assert a == select_top(flat, 10, torch.Generator().manual_seed(0))
    assert a != select_top(flat, 10, torch.Generator().manual_seed(1))
    assert len(set(a)) == 10 and a != list(range(10))
