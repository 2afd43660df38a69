"""Best-of-n estimator, KL of best-of-n and the Gao et al. fits against values checkable by hand."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from prefloop.eval.overopt import (
    best_of_n_curve,
    best_of_n_expectation,
    fit_bon,
    fit_rl,
    kl_best_of_n,
    peak,
    predict,
)


def test_best_of_n_by_hand():
    s = [3.0, 1.0, 2.0]
    assert best_of_n_expectation(s, 1) == pytest.approx(2.0)  # the mean
    assert best_of_n_expectation(s, 3) == pytest.approx(3.0)  # the max
    # n=2 over the 3 subsets {1,2},{1,3},{2,3}: maxima 2, 3, 3 -> 8/3
    assert best_of_n_expectation(s, 2) == pytest.approx(8 / 3)
    with pytest.raises(ValueError):
        best_of_n_expectation(s, 4)


def test_best_of_n_matches_enumeration_with_a_separate_key():
    rng = random.Random(0)
    proxy = [rng.random() for _ in range(7)]
    gold = [rng.gauss(0, 1) for _ in range(7)]
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        brute = sum(gold[max(c, key=lambda i: proxy[i])] for c in subsets) / len(subsets)
        assert best_of_n_expectation(gold, n, key=proxy) == pytest.approx(brute)


def test_kl_best_of_n():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_best_of_n(16) == pytest.approx(math.log(16) - 15 / 16)


def test_curve_proxy_rises_while_gold_can_fall():
    # The proxy's favourite is gold-bad: proxy keeps rising with n, gold falls at the end.
    proxy = [[0.0, 1.0, 2.0, 3.0]]
    gold = [[0.0, 2.0, 3.0, -5.0]]
    curve = best_of_n_curve(proxy, gold)
    assert [r["n"] for r in curve] == [1, 2, 3, 4]
    assert [r["proxy"] for r in curve] == sorted(r["proxy"] for r in curve)
    assert curve[0]["gold"] == pytest.approx(0.0) and curve[-1]["gold"] == pytest.approx(-5.0)
    assert curve[1]["kl"] == pytest.approx(kl_best_of_n(2)) and curve[1]["d"] == pytest.approx(
        math.sqrt(kl_best_of_n(2)))


def test_fit_bon_recovers_the_form_and_its_peak():
    alpha, beta = 2.0, 0.5
    d = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    r = [1.0 + x * (alpha - beta * x) for x in d]
    f = fit_bon(d, r)
    assert f["alpha"] == pytest.approx(alpha) and f["beta"] == pytest.approx(beta) and f["r0"] == 1.0
    assert f["peak_d"] == pytest.approx(2.0) and f["peak_kl"] == pytest.approx(4.0)
    assert predict(f, 2.0) == pytest.approx(3.0)


def test_fit_rl_recovers_the_form_and_its_peak():
    alpha, beta = 1.0, 0.5
    d = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    r = [x * (alpha - beta * math.log(x)) if x > 0 else 0.0 for x in d]
    f = fit_rl(d, r)
    assert f["alpha"] == pytest.approx(alpha) and f["beta"] == pytest.approx(beta)
    assert f["peak_d"] == pytest.approx(math.exp(1.0))  # exp(alpha / beta - 1)
    # Without a point at d = 0 (an RL run's first log), R(0) is a third fitted parameter.
    f = fit_rl(d[1:], [2.0 + v for v in r[1:]])
    assert f["r0"] == pytest.approx(2.0) and f["alpha"] == pytest.approx(alpha) and f["beta"] == pytest.approx(beta)
    # A monotone proxy (beta < 0) has no peak.
    assert fit_rl([0.5, 1.0, 2.0], [1.0, 2.0, 5.0])["peak_d"] is None
    with pytest.raises(ValueError):
        fit_bon([0.0, 1.0, 1.0], [0.0, 2.0, 2.0])


def test_peak_first_maximum():
    assert peak([0, 1, 2, 3], [1.0, 3.0, 3.0, 2.0]) == {"index": 1, "x": 1, "y": 3.0}


def test_fit_quality_supports_a_clean_curve_and_refuses_noise():
    import random

    from prefloop.eval.overopt import fit_quality, fit_rl

    rng = random.Random(0)
    d = [0.2 * i for i in range(1, 21)]
    true = fit_rl(d, [x * (1.0 - 0.5 * math.log(x)) for x in d])  # peak at d* = exp(1/0.5 - 1) = e
    clean = [x * (1.0 - 0.5 * math.log(x)) + rng.gauss(0, 0.01) for x in d]
    q = fit_quality("rl", d, clean)
    assert q["supported"] and q["r2"] > 0.95 and q["points"] == 20
    lo, hi = q["peak_kl_ci"]
    assert lo <= true["peak_kl"] <= hi and q["peak_share"] > 0.9
    noise = [rng.gauss(0, 1) for _ in d]  # a flat line through noisy points says nothing
    q = fit_quality("rl", d, noise)
    assert not q["supported"] and q["r2"] < 0.5 and "R^2" in q["reason"]
    q = fit_quality("rl", d[:4], clean[:4])
    assert not q["supported"] and "only 4 points" in q["reason"]
