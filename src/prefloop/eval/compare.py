"""Judged comparisons between policies: win rates with ties counted half."""

from __future__ import annotations

import math


def win_rate(scores_a: list[float], scores_b: list[float], tol: float = 1e-9) -> float:
    """Fraction of paired comparisons that A wins under a judge's scores, ties counted half."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError("win_rate needs two equally long, non-empty lists of scores")
    total = 0.0
    for a, b in zip(scores_a, scores_b):
        total += 1.0 if a > b + tol else 0.5 if abs(a - b) <= tol else 0.0
    return total / len(scores_a)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p from n trials."""
    if n == 0:
        return (float("nan"), float("nan"))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Fraction of pairs where chosen scores strictly above rejected (a tie is wrong, as in RewardBench)."""
    if not chosen:
        return float("nan")
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
