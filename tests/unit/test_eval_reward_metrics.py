"""Reward-model metrics against hand-computed values: accuracy with ties wrong, calibration, per pool."""

from __future__ import annotations

import math

import pytest

from prefloop.eval.reward_metrics import (
    accuracy_by_group,
    bt_calibration,
    bt_probability,
    expected_calibration_error,
    reliability_curve,
    reward_model_metrics,
)


def test_bt_probability_is_a_stable_sigmoid():
    assert bt_probability(1.0, 1.0) == 0.5
    assert bt_probability(math.log(3), 0.0) == pytest.approx(0.75)
    assert bt_probability(0.0, math.log(3)) == pytest.approx(0.25)
    assert bt_probability(0.0, 1000.0) == 0.0 and bt_probability(1000.0, 0.0) == 1.0


def test_reliability_bins_and_ece_by_hand():
    # Bins over [0, 1] of width 0.5: {0.2, 0.4} -> conf 0.3, freq 0.5; {0.6, 1.0} -> conf 0.8, freq 1.
    bins = reliability_curve([0.2, 0.4, 0.6, 1.0], [1, 0, 1, 1], n_bins=2)
    assert [b.count for b in bins] == [2, 2]
    assert bins[0].confidence == pytest.approx(0.3) and bins[0].accuracy == pytest.approx(0.5)
    assert bins[1].confidence == pytest.approx(0.8) and bins[1].accuracy == pytest.approx(1.0)
    # ECE = 0.5 * |0.5 - 0.3| + 0.5 * |1 - 0.8| = 0.2
    assert expected_calibration_error(bins) == pytest.approx(0.2)
    empty = reliability_curve([], [], n_bins=3)
    assert all(b.count == 0 and math.isnan(b.accuracy) for b in empty)
    assert math.isnan(expected_calibration_error(empty))
    with pytest.raises(ValueError):
        reliability_curve([0.1], [], n_bins=2)


def test_bt_calibration_confidence_form():
    d = math.log(3)  # p = 0.75 for the preferred side
    # Two pairs the model gets right at 0.75, one it gets wrong at 0.75 (prefers rejected), one tie.
    chosen, rejected = [d, d, 0.0, 2.0], [0.0, 0.0, d, 2.0]
    bins, ece = bt_calibration(chosen, rejected, n_bins=2)  # bins [0.5, 0.75), [0.75, 1]
    assert [b.count for b in bins] == [1, 3]
    assert bins[0].confidence == pytest.approx(0.5) and bins[0].accuracy == pytest.approx(0.5)  # the tie
    assert bins[1].confidence == pytest.approx(0.75) and bins[1].accuracy == pytest.approx(2 / 3)
    assert ece == pytest.approx(0.75 * abs(2 / 3 - 0.75))


def test_accuracy_per_pool_and_summary():
    chosen, rejected = [1.0, 0.0, 2.0, 3.0, 1.0], [0.0, 1.0, 2.0, 1.0, 0.0]
    pools = ["standard", "standard", "verbose", "verbose", None]
    by = accuracy_by_group(chosen, rejected, pools)
    assert list(by) == ["standard", "verbose", "(none)"]
    assert by["standard"] == {"accuracy": 0.5, "n": 2}
    assert by["verbose"] == {"accuracy": 0.5, "n": 2}  # the tie 2.0 vs 2.0 is wrong
    assert by["(none)"] == {"accuracy": 1.0, "n": 1}
    m = reward_model_metrics(chosen, rejected, pools, n_bins=4)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["ties"] == 1 and m["n"] == 5
    assert m["mean_margin"] == pytest.approx((1 - 1 + 0 + 2 + 1) / 5)
    assert len(m["calibration"]) == 4 and sum(b["count"] for b in m["calibration"]) == 5
