"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import pytest

from prefloop.eval import distinct_n, pairwise_accuracy, per_input_self_bleu, self_bleu, wilson_interval, win_rate


def test_distinct_n_by_hand():
    # "a b a" + "a c": unigrams a,b,a,a,c -> 3 distinct / 5; bigrams ab, ba, ac -> 3 / 3
    assert distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "a c"], 2) == pytest.approx(1.0)
    assert distinct_n([""], 1) == 0.0


def test_self_bleu_identical_and_disjoint():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "e f g h"]) == pytest.approx(0.0)
    mixed = self_bleu(["the cat sat on the mat", "the cat sat on a rug", "dogs run fast today ok"])
    assert 0.0 < mixed < 1.0
    assert per_input_self_bleu([["x y z w"] * 2, ["a b c d", "e f g h"]]) == pytest.approx(0.5)


def test_win_rate_ties_count_half():
    assert win_rate([1, 2, 3, 0], [0, 2, 4, 0]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    with pytest.raises(ValueError):
        win_rate([], [])


def test_pairwise_accuracy_tie_is_wrong_and_wilson():
    assert pairwise_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(1 / 3)
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
