"""Intervals over prompts, paired stage differences, length-controlled win rates and regression flags, against
known answers on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from prefloop.eval.stats import (
    cluster_mean,
    find_regressions,
    length_controlled_win_rate,
    paired_difference,
    win_values,
)


def _clustered(rng, n_prompts: int, k: int, mean: float, prompt_sd: float = 1.0, sample_sd: float = 0.5):
    """K samples per prompt that share a prompt effect: samples of one prompt are correlated."""
    effects = rng.normal(mean, prompt_sd, n_prompts)
    return [list(e + rng.normal(0, sample_sd, k)) for e in effects]


def test_cluster_interval_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits = [cluster_mean(_clustered(rng, 40, 4, 2.0), n_resamples=999, seed=i) for i in range(150)]
    coverage = np.mean([h["ci_low"] <= 2.0 <= h["ci_high"] for h in hits])
    # 95% nominal; a percentile bootstrap on 40 clusters runs slightly narrow, never far off.
    assert 0.88 <= coverage <= 0.99, coverage
    assert hits[0]["prompts"] == 40 and hits[0]["samples"] == 160


def test_treating_samples_as_independent_would_be_too_narrow():
    """The interval resamples prompts with all their samples: with a strong prompt effect it is about as wide as
    one over prompt means, far wider than one pretending the 8 samples of a prompt are 8 prompts."""
    rng = np.random.default_rng(2)
    vals = _clustered(rng, 30, 8, 0.0, prompt_sd=1.0, sample_sd=0.1)
    clustered = cluster_mean(vals, seed=0)
    flat = cluster_mean([[x] for row in vals for x in row], seed=0)
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(clustered) > 2 * width(flat)
    assert clustered["mean"] == pytest.approx(np.mean(vals))


def test_prompts_without_values_do_not_count_and_a_constant_metric_has_a_point_interval():
    r = cluster_mean([[1.0, 0.0], [], [1.0], [0.0, 0.0]], seed=0)
    assert r["prompts"] == 3 and r["samples"] == 5 and r["mean"] == pytest.approx(0.4)
    zero = cluster_mean([[0.0, 0.0]] * 10)
    assert (zero["mean"], zero["ci_low"], zero["ci_high"]) == (0.0, 0.0, 0.0)


def test_paired_difference_finds_a_planted_regression_and_not_a_null_one():
    rng = np.random.default_rng(3)
    sft = [[float(x) for x in rng.random(2) < p] for p in rng.uniform(0.05, 0.6, 48)]
    worse = [[float(x) for x in rng.random(2) < min(1.0, p + 0.35)] for p in rng.uniform(0.05, 0.6, 48)]
    d = paired_difference(worse, sft, seed=0)
    assert d["significant"] and d["ci_low"] > 0 and d["prompts"] == 48
    # The same policy sampled twice: no difference, the interval covers 0 (in nearly every seed).
    p = rng.uniform(0.05, 0.6, 48)
    null = [paired_difference([[float(x) for x in rng.random(2) < q] for q in p],
                              [[float(x) for x in rng.random(2) < q] for q in p], seed=s) for s in range(40)]
    assert np.mean([n["significant"] for n in null]) <= 0.125
    assert not null[0]["significant"] or null[1]["ci_low"] <= 0 <= null[1]["ci_high"]


def test_pairing_cancels_prompt_difficulty():
    rng = np.random.default_rng(4)
    base = rng.normal(0, 3, 50)
    a = [[b + 0.3 + rng.normal(0, 0.1)] for b in base]
    b = [[x] for x in base]
    d = paired_difference(a, b, seed=0)
    assert d["diff"] == pytest.approx(0.3, abs=0.05) and d["significant"]
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(a, b[:-1])


def test_length_controlled_win_rate_of_a_judge_that_only_likes_length_is_one_half():
    rng = np.random.default_rng(5)
    n, k = 300, 2
    la = rng.normal(60, 15, (n, k))  # the policy writes longer answers
    lb = rng.normal(40, 15, (n, k))
    d = la - lb
    # The judge looks at length only (noisily): P(A wins) = sigmoid(3 tanh(d / sd)).
    p = 1 / (1 + np.exp(-3 * np.tanh(d / d.std())))
    wins = (rng.random((n, k)) < p).astype(float)
    r = length_controlled_win_rate(wins.tolist(), d.tolist(), seed=0)
    assert r["win_rate"] > 0.75
    assert r["lc_win_rate"] == pytest.approx(0.5, abs=0.06)
    assert r["lc_ci_low"] < 0.5 < r["lc_ci_high"] and r["ci_low"] > 0.7
    assert r["length_coef"] > 1 and abs(r["gain_kept"]) < 0.25


def test_length_controlled_win_rate_keeps_a_real_quality_edge():
    rng = np.random.default_rng(6)
    d = rng.normal(0, 10, (200, 2))  # lengths unrelated to quality, judge ignores length
    wins = (rng.random((200, 2)) < 0.7).astype(float)
    r = length_controlled_win_rate(wins.tolist(), d.tolist(), seed=0)
    assert r["lc_win_rate"] == pytest.approx(r["win_rate"], abs=0.03) and r["lc_ci_low"] > 0.6
    assert r["gain_kept"] == pytest.approx(1.0, abs=0.2)


def test_win_values_and_regressions_sorted_safety_first():
    assert win_values([[2.0, 1.0]], [[1.0, 1.0]]) == [[1.0, 0.5]]
    diffs = {"ppo - sft": {"gold_reward_mean": {"diff": -0.9, "significant": True},
                           "redteam_bad_answer_rate": {"diff": 0.3, "significant": True},
                           "hallucination_rate": {"diff": 0.2, "significant": False},
                           "kl_to_ref": {"diff": 3.0, "significant": True},
                           "distinct_2": {"diff": 0.1, "significant": True}}}
    better = {"gold_reward_mean": 1, "redteam_bad_answer_rate": -1, "hallucination_rate": -1, "distinct_2": 1}
    regs = find_regressions(diffs, better, first=("redteam_bad_answer_rate",))
    assert [r["metric"] for r in regs] == ["redteam_bad_answer_rate", "gold_reward_mean"]


def test_wilson_interval_matches_scipy_on_whole_counts():
    """The project keeps its own Wilson interval only because ties make the count fractional (half a win)."""
    from scipy.stats import binomtest

    from prefloop.eval import wilson_interval

    for k, n in ((7, 10), (0, 12), (45, 48), (300, 400)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k / n, n, z=1.959963984540054)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_judgments_file_repeats_of_a_prompt_use_the_bootstrap_and_get_a_length_control():
    from prefloop.data import Comparison
    from prefloop.eval import judged_win_rate

    rng = np.random.default_rng(7)
    recs = []
    for i in range(60):
        for _ in range(3):  # three judges per prompt, who all prefer the longer answer
            long, short = "word " * int(rng.integers(8, 20)), "word " * int(rng.integers(2, 12))
            mine_long = rng.random() < 0.8
            recs.append(Comparison(f"q{i}", long, short, meta={"chosen_policy": "ppo" if mine_long else "sft",
                                                               "rejected_policy": "sft" if mine_long else "ppo"}))
    wr = judged_win_rate(recs, "ppo", "sft")
    assert wr["interval"] == "bootstrap over prompts" and wr["prompts"] == 60 and wr["n"] == 180
    assert wr["win_rate"] > 0.7 and wr["lc_win_rate"] < wr["win_rate"] - 0.1 and wr["length_coef"] > 0
