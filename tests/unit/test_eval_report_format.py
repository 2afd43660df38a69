"""Report formatting: precision follows the interval, smoothing keeps the level, stages sort in pipeline order,
and the regression list puts safety first."""

from __future__ import annotations

import pytest

from prefloop.eval.report_doc import decimals, fmt_ci
from prefloop.eval.report_run import smooth
from prefloop.eval.report_sections import pipeline_rank


def test_precision_follows_the_interval_and_no_negative_zero():
    assert fmt_ci({"mean": 0.4531, "ci_low": 0.312, "ci_high": 0.594}) == "0.45 [0.31, 0.59]"
    assert fmt_ci({"mean": 0.4531, "ci_low": 0.445, "ci_high": 0.461}) == "0.453 [0.445, 0.461]"
    assert fmt_ci({"mean": 18.12, "ci_low": 16.6, "ci_high": 19.7}) == "18.1 [16.6, 19.7]"
    # SFT's KL to itself: zero, never "3.48e-07" or "-0.000".
    assert fmt_ci({"mean": -3e-7, "ci_low": -1e-6, "ci_high": 2e-6}) == "0.000 [0.000, 0.000]"
    assert fmt_ci({"mean": 0.34, "ci_low": 0.22, "ci_high": 0.48}, sign=True) == "+0.34 [+0.22, +0.48]"
    assert fmt_ci(None) == "n/a" and decimals(None) == 3


def test_smoothing_keeps_a_constant_and_damps_noise():
    assert smooth([2.0] * 10, 5) == pytest.approx([2.0] * 10)  # bias-corrected: no pull towards 0
    zigzag = [(-1) ** i for i in range(40)]
    assert max(abs(v) for v in smooth(zigzag, 6)[10:]) < 0.35


def test_stages_sort_in_pipeline_order():
    names = ["ppo", "reward", "base", "sft", "zzz", "round-2/ppo", "round-1/ppo"]
    assert sorted(names, key=pipeline_rank) == ["base", "sft", "reward", "ppo", "zzz", "round-1/ppo", "round-2/ppo"]


def test_summarise_flags_the_planted_red_team_regression_first():
    from prefloop.eval.intervals import summarise

    n = 40
    values = {"sft": {"redteam_bad_answer_rate": [[0.0, 0.0]] * (n - 4) + [[1.0, 0.0]] * 4,
                      "per_input/distinct_2": [[0.9]] * n, "kl_to_ref": [[0.0, 0.0]] * n},
              "ppo": {"redteam_bad_answer_rate": [[1.0, 0.0]] * (n // 2) + [[0.0, 0.0]] * (n // 2),
                      "per_input/distinct_2": [[0.9 - 0.1 * (i % 2)] for i in range(n)],
                      "kl_to_ref": [[3.0, 3.5]] * n}}
    s = summarise(values, ["sft", "ppo"])
    assert [r["metric"] for r in s["regressions"]] == ["redteam_bad_answer_rate", "per_input/distinct_2"]
    assert s["differences"]["ppo - sft"]["kl_to_ref"]["significant"]  # significant, but KL is no regression
    assert s["intervals"]["ppo"]["redteam_bad_answer_rate"]["samples"] == 2 * n
