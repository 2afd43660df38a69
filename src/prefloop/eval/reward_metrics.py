"""Reward-model metrics on held-out comparisons: accuracy (ties wrong), calibration, accuracy per pool.

Pure Python on lists of scores, so they test by hand. docs/EVALUATION.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .compare import pairwise_accuracy


def bt_probability(chosen: float, rejected: float) -> float:
    """Bradley-Terry probability that `chosen` is preferred: sigmoid(r_chosen - r_rejected)
    (Bradley & Terry 1952; the reward-model loss of Ouyang et al. 2022, eq. 1)."""
    d = chosen - rejected
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


@dataclass
class ReliabilityBin:
    lo: float
    hi: float
    count: int
    confidence: float  # mean predicted probability in the bin (nan when empty)
    accuracy: float  # observed frequency in the bin (nan when empty)


def reliability_curve(probs: Sequence[float], outcomes: Sequence[float], n_bins: int = 10, lo: float = 0.0,
                      hi: float = 1.0) -> list[ReliabilityBin]:
    """Equal-width bins of predicted probability over [lo, hi]; each bin's mean prediction and observed
    frequency of the outcome (a reliability diagram, DeGroot & Fienberg 1983; Guo et al. 2017, sec. 2).
    A probability equal to a bin edge goes to the upper bin, `hi` itself to the last one."""
    if len(probs) != len(outcomes):
        raise ValueError("reliability_curve needs as many outcomes as probabilities")
    if n_bins < 1 or not hi > lo:
        raise ValueError("reliability_curve needs n_bins >= 1 and hi > lo")
    width = (hi - lo) / n_bins
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for p, y in zip(probs, outcomes):
        b = min(n_bins - 1, max(0, int((p - lo) / width)))
        sums[b][0] += 1
        sums[b][1] += p
        sums[b][2] += y
    nan = float("nan")
    return [ReliabilityBin(lo + i * width, lo + (i + 1) * width, n, c / n if n else nan, a / n if n else nan)
            for i, (n, c, a) in enumerate(sums)]


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| (Naeini et al. 2015; Guo et al. 2017, eq. 3)."""
    total = sum(b.count for b in bins)
    if total == 0:
        return float("nan")
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count)


def bt_calibration(chosen: Sequence[float], rejected: Sequence[float], n_bins: int = 5
                   ) -> tuple[list[ReliabilityBin], float]:
    """Calibration of the reward model's Bradley-Terry probability against the labels.

    Each pair is read in confidence form: the model's confidence is q = max(p, 1 - p) with
    p = sigmoid(r_chosen - r_rejected), the outcome is 1 when the response it prefers is the labelled
    `chosen` (0 when it prefers `rejected`, 0.5 on an exact tie), binned over [0.5, 1] (the preference-model
    calibration plot of Bai et al. 2022, sec. 3.2). A calibrated model is right 70% of the time when it
    says 0.7. Returns the bins and the expected calibration error.
    """
    probs, outcomes = [], []
    for c, r in zip(chosen, rejected):
        p = bt_probability(c, r)
        probs.append(max(p, 1 - p))
        outcomes.append(0.5 if c == r else float(c > r))
    bins = reliability_curve(probs, outcomes, n_bins, 0.5, 1.0)
    return bins, expected_calibration_error(bins)


def accuracy_by_group(chosen: Sequence[float], rejected: Sequence[float], groups: Sequence[str | None],
                      missing: str = "(none)") -> dict[str, dict]:
    """Pairwise accuracy (ties wrong) per group, e.g. per annotator pool: {group: {"accuracy", "n"}},
    groups in order of first appearance; pairs without a group go under `missing`."""
    idx: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        idx.setdefault(missing if g is None else str(g), []).append(i)
    return {g: {"accuracy": pairwise_accuracy([chosen[i] for i in ix], [rejected[i] for i in ix]), "n": len(ix)}
            for g, ix in idx.items()}


def reward_model_metrics(chosen: Sequence[float], rejected: Sequence[float],
                         pools: Sequence[str | None] | None = None, n_bins: int = 5) -> dict:
    """Everything `prefloop eval reward` reports, as one JSON-ready dict."""
    bins, ece = bt_calibration(chosen, rejected, n_bins)
    margins = [c - r for c, r in zip(chosen, rejected)]
    out = {"accuracy": pairwise_accuracy(list(chosen), list(rejected)), "n": len(chosen),
           "ties": sum(c == r for c, r in zip(chosen, rejected)),
           "mean_margin": sum(margins) / len(margins) if margins else float("nan"),
           "ece": ece, "calibration": [vars(b) for b in bins]}
    if pools is not None:
        out["by_pool"] = accuracy_by_group(chosen, rejected, pools)
    return out
