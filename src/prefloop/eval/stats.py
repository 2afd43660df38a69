"""Uncertainty of evaluation numbers: bootstrap intervals over prompts, paired differences between stages, and
the length-controlled win rate. Pure numpy / scipy.

Samples of one prompt are not independent (a prompt the policy cannot answer fails all its K samples), so
every interval resamples prompts, each with all its samples (a cluster bootstrap; Davison & Hinkley 1997,
sec. 3.8). A metric is given per prompt as the list of its samples' values; a prompt may have no value for a
metric (made-up facts are measured on fact questions only) and then does not take part.

`scipy.stats.bootstrap` does the resampling for means, rates and their paired differences (a ratio of per-prompt
sums and counts, so prompts with unequal numbers of values are weighted by their values). The length-controlled
win rate refits a two-parameter logistic regression on every resample; that is done here with a batched Newton
iteration in numpy, because fitting 1,000 resamples one by one with a general optimiser takes seconds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


def _sums_counts(values: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    sums = np.array([float(sum(v)) for v in values], dtype=float)
    counts = np.array([float(len(v)) for v in values], dtype=float)
    return sums, counts


def _ratio(s, c, axis=-1):
    return np.sum(s, axis=axis) / np.sum(c, axis=axis)


def _diff_ratio(sa, ca, sb, cb, axis=-1):
    return _ratio(sa, ca, axis) - _ratio(sb, cb, axis)


def _bootstrap(data: tuple, statistic, level: float, n_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile interval of `statistic` over prompts resampled with replacement (all arrays together)."""
    from scipy.stats import bootstrap

    if len(data[0]) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # a constant metric (all zeros, say) warns and has the point as interval
        warnings.simplefilter("ignore")
        res = bootstrap(data, statistic, paired=True, vectorized=True, confidence_level=level,
                        n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        point = float(statistic(*data))
        return point, point
    return lo, hi


def cluster_mean(values: Sequence[Sequence[float]], level: float = LEVEL, n_resamples: int = RESAMPLES,
                 seed: int = 0) -> dict:
    """Mean of all values (every sample of every prompt) with its bootstrap interval over prompts.

    `values[i]` holds the values of prompt i's samples. Returns {"mean", "ci_low", "ci_high", "prompts",
    "samples"}; the interval is NaN with fewer than two prompts that have values."""
    kept = [list(v) for v in values if len(v)]
    if not kept:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "prompts": 0, "samples": 0}
    s, c = _sums_counts(kept)
    lo, hi = _bootstrap((s, c), _ratio, level, n_resamples, seed)
    return {"mean": float(s.sum() / c.sum()), "ci_low": lo, "ci_high": hi, "prompts": len(kept),
            "samples": int(c.sum())}


def paired_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], level: float = LEVEL,
                      n_resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """mean(a) - mean(b) for two stages measured on the same prompts (a[i] and b[i] are prompt i), with a
    bootstrap interval that resamples prompts once for both stages, so prompt difficulty cancels.

    Prompts where either stage has no value are left out. `significant`: the interval excludes 0."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs the same prompts for both stages, got {len(a)} and {len(b)}")
    keep = [i for i in range(len(a)) if len(a[i]) and len(b[i])]
    if not keep:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "prompts": 0,
                "significant": False}
    sa, ca = _sums_counts([a[i] for i in keep])
    sb, cb = _sums_counts([b[i] for i in keep])
    lo, hi = _bootstrap((sa, ca, sb, cb), _diff_ratio, level, n_resamples, seed)
    diff = float(_diff_ratio(sa, ca, sb, cb))
    return {"diff": diff, "ci_low": lo, "ci_high": hi, "prompts": len(keep),
            "significant": bool(math.isfinite(lo) and (lo > 0 or hi < 0))}


def win_values(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], tol: float = 1e-9) -> list[list[float]]:
    """Per prompt, sample k of A against sample k of B under a judge's scores: 1 win, 0.5 tie, 0 loss."""
    if len(a) != len(b):
        raise ValueError(f"win_values needs the same prompts for both, got {len(a)} and {len(b)}")
    return [[1.0 if x > y + tol else 0.5 if abs(x - y) <= tol else 0.0 for x, y in zip(ra, rb)]
            for ra, rb in zip(a, b)]


# -- length-controlled win rate ------------------------------------------------------------------------------
def _fit_logistic(y: np.ndarray, x: np.ndarray, w: np.ndarray, ridge: float, iters: int = 50) -> np.ndarray:
    """Weighted logistic regression logit P(win) = theta + phi x for B weight vectors at once.

    y, x: (n,); w: (B, n) resample weights. Newton's method on the log-likelihood with a small ridge on phi
    only (so a judge that follows length exactly still gives a finite fit). Soft labels (0.5 for a tie) are
    allowed: the loss is the cross-entropy. Returns (B, 2) rows [theta, phi]."""
    beta = np.zeros((w.shape[0], 2))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(beta[:, :1] + beta[:, 1:] * x, -30, 30)))
        r = w * (y - p)
        s = w * p * (1 - p)
        g = np.stack([r.sum(1), (r * x).sum(1) - ridge * beta[:, 1]], 1)
        h00, h01, h11 = s.sum(1) + 1e-9, (s * x).sum(1), (s * x * x).sum(1) + ridge
        det = h00 * h11 - h01 * h01
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det], 1)
        beta = beta + np.clip(step, -5, 5)
        if np.abs(step).max() < 1e-8:
            break
    return beta


def length_controlled_win_rate(wins: Sequence[Sequence[float]], len_diff: Sequence[Sequence[float]],
                               level: float = LEVEL, n_resamples: int = 1000, seed: int = 0,
                               ridge: float = 1.0) -> dict:
    """Win rate with the judge's preference for length regressed out (length-controlled AlpacaEval, Dubois et al.
    2024): fit logit P(A wins) = theta + phi tanh(dlen / sd(dlen)) over all comparisons, then the
    length-controlled win rate is sigmoid(theta), the predicted win rate when the two answers are equally long.

    wins[i][k]: 1 / 0.5 / 0 for comparison k of prompt i; len_diff[i][k]: length of A's answer minus B's (words).
    Returns the raw and controlled win rates with bootstrap intervals over prompts, `length_coef` (phi; > 0: the
    judge prefers the longer answer) and `gain_kept`: (LC - 0.5) / (raw - 0.5), the share of A's edge over an even
    match that survives the control (None when the raw rate is within 0.01 of 0.5)."""
    rows = [(list(wv), list(dv)) for wv, dv in zip(wins, len_diff) if len(wv)]
    if any(len(wv) != len(dv) for wv, dv in rows):
        raise ValueError("length_controlled_win_rate: every prompt needs a length difference per comparison")
    if not rows:
        raise ValueError("length_controlled_win_rate needs at least one comparison")
    y = np.array([v for wv, _ in rows for v in wv], dtype=float)
    d = np.array([v for _, dv in rows for v in dv], dtype=float)
    cluster = np.repeat(np.arange(len(rows)), [len(wv) for wv, _ in rows])
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(n_resamples, len(rows)))
    per_prompt = np.zeros((n_resamples, len(rows)))
    np.add.at(per_prompt, (np.arange(n_resamples)[:, None], picks), 1.0)
    w = np.vstack([np.ones(len(y)), per_prompt[:, cluster]])
    beta = _fit_logistic(y, x, w, ridge)
    lc = 1.0 / (1.0 + np.exp(-np.clip(beta[:, 0], -30, 30)))
    raw = (w * y).sum(1) / w.sum(1)
    alpha = (1 - level) / 2
    lo, hi = (np.quantile(lc[1:], [alpha, 1 - alpha]) if len(rows) > 1 else (np.nan, np.nan))
    rlo, rhi = (np.quantile(raw[1:], [alpha, 1 - alpha]) if len(rows) > 1 else (np.nan, np.nan))
    gain = (lc[0] - 0.5) / (raw[0] - 0.5) if abs(raw[0] - 0.5) > 0.01 else None
    return {"win_rate": float(raw[0]), "ci_low": float(rlo), "ci_high": float(rhi),
            "lc_win_rate": float(lc[0]), "lc_ci_low": float(lo), "lc_ci_high": float(hi),
            "length_coef": float(beta[0, 1]), "gain_kept": None if gain is None else float(gain),
            "prompts": len(rows), "comparisons": len(y)}


# -- regressions -----------------------------------------------------------------------------------------------
def find_regressions(differences: dict[str, dict[str, dict]], better: dict[str, int],
                     first: Sequence[str] = ()) -> list[dict]:
    """Metrics that got significantly worse from one stage to the next.

    differences: {"ppo - sft": {metric: paired_difference(...)}}; better: {metric: +1 if higher is better, -1
    if lower is}; metrics not in `better` (KL, length) are never regressions. Sorted with `first` metrics in that
    order ahead of the rest, then by the size of the change."""
    out = []
    for pair, diffs in differences.items():
        for metric, dd in diffs.items():
            sign = better.get(metric)
            if not sign or not dd.get("significant"):
                continue
            if dd["diff"] * sign < 0:
                out.append({"comparison": pair, "metric": metric, **dd})
    rank = {m: i for i, m in enumerate(first)}
    return sorted(out, key=lambda r: (rank.get(r["metric"], len(rank)), -abs(r["diff"])))
