"""Over-optimisation (Goodhart): best-of-n curves, the exact KL of best-of-n, and the functional forms of
Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") fitted by least squares.

Pure Python. EVALUATION.md, "Over-optimisation".
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def best_of_n_expectation(scores: Sequence[float], n: int, key: Sequence[float] | None = None) -> float:
    """Unbiased estimate of E[value of the best of n draws] from N >= n draws of one prompt.

    With the draws sorted ascending by `key` (default: the scores themselves), the i-th (1-based) is the best
    of a random n-subset with probability C(i-1, n-1) / C(N, n), so
    E = sum_{i=n..N} C(i-1, n-1) / C(N, n) * scores_(i) (Nakano et al. 2021, app.; Gao et al. 2022, sec. 3.1).
    With `key` = proxy scores and `scores` = gold scores, this is the gold reward of best-of-n under the proxy.
    Ties in `key` are broken by position (stable sort).
    """
    N = len(scores)
    if key is not None and len(key) != N:
        raise ValueError("best_of_n_expectation: key and scores differ in length")
    if not 1 <= n <= N:
        raise ValueError(f"best_of_n_expectation needs 1 <= n <= N, got n={n}, N={N}")
    order = sorted(range(N), key=lambda i: (key if key is not None else scores)[i])
    total = math.comb(N, n)
    return sum(math.comb(i - 1, n - 1) / total * scores[order[i - 1]] for i in range(n, N + 1))


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon et al. 2020, app. G.3; Gao et al. 2022)."""
    if n < 1:
        raise ValueError(f"kl_best_of_n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_curve(proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]] | None = None,
                    max_n: int | None = None) -> list[dict]:
    """Per n = 1..max_n (default: the samples per prompt), averaged over prompts: the proxy reward of the
    proxy's best of n, the gold reward of that same choice, KL_bon and d = sqrt(KL_bon).

    proxy / gold: [prompts][N] scores of the same samples. Rows shorter than n are skipped at that n."""
    if not proxy:
        raise ValueError("best_of_n_curve needs at least one prompt")
    top = max_n or min(len(r) for r in proxy)
    rows = []
    for n in range(1, top + 1):
        use = [i for i, r in enumerate(proxy) if len(r) >= n]
        row = {"n": n, "kl": kl_best_of_n(n), "d": math.sqrt(kl_best_of_n(n)),
               "proxy": sum(best_of_n_expectation(proxy[i], n) for i in use) / len(use)}
        if gold is not None:
            row["gold"] = sum(best_of_n_expectation(gold[i], n, key=proxy[i]) for i in use) / len(use)
        rows.append(row)
    return rows


def _lstsq2(f1: list[float], f2: list[float], y: list[float]) -> tuple[float, float]:
    """Least squares for y = a f1 + b f2 (no intercept): the 2x2 normal equations."""
    s11 = sum(a * a for a in f1)
    s22 = sum(b * b for b in f2)
    s12 = sum(a * b for a, b in zip(f1, f2))
    t1 = sum(a * v for a, v in zip(f1, y))
    t2 = sum(b * v for b, v in zip(f2, y))
    det = s11 * s22 - s12 * s12
    if abs(det) < 1e-12 * max(1.0, s11 * s22):
        raise ValueError("the fit needs at least two distinct non-zero distances")
    return (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det


def _baseline(d: Sequence[float], r: Sequence[float], r0: float | None) -> tuple[list[float], list[float], float]:
    if len(d) != len(r) or not d:
        raise ValueError("the fit needs as many rewards as distances, at least one")
    if any(x < 0 for x in d):
        raise ValueError("distances d = sqrt(KL) must be >= 0")
    base = r[min(range(len(d)), key=lambda i: d[i])] if r0 is None else r0
    return list(d), [v - base for v in r], base


def fit_bon(d: Sequence[float], r: Sequence[float], r0: float | None = None) -> dict:
    """Fit R(d) - R(0) = d (alpha - beta d) (Gao et al. 2022, eq. 1, best-of-n) by least squares.

    R(0) is `r0` or the reward at the smallest d. Returns alpha, beta, r0 and the peak d* = alpha / (2 beta)
    (None when beta <= 0: no peak) with its KL = d*^2."""
    d, y, base = _baseline(d, r, r0)
    alpha, beta = _lstsq2(d, [-x * x for x in d], y)
    peak = alpha / (2 * beta) if beta > 0 and alpha > 0 else None
    return {"form": "bon", "alpha": alpha, "beta": beta, "r0": base, "peak_d": peak,
            "peak_kl": peak * peak if peak is not None else None}


def fit_rl(d: Sequence[float], r: Sequence[float], r0: float | None = None) -> dict:
    """Fit R(d) - R(0) = d (alpha - beta log d) (Gao et al. 2022, eq. 2, RL) by least squares.

    dR/dd = alpha - beta (log d + 1) = 0 gives the peak d* = exp(alpha / beta - 1) (None when beta <= 0).
    Points with d = 0 contribute 0 = 0 (d log d -> 0) and are kept."""
    d, y, base = _baseline(d, r, r0)
    alpha, beta = _lstsq2(d, [-x * math.log(x) if x > 0 else 0.0 for x in d], y)
    peak = math.exp(alpha / beta - 1) if beta > 0 and alpha / beta < 50 else None
    return {"form": "rl", "alpha": alpha, "beta": beta, "r0": base, "peak_d": peak,
            "peak_kl": peak * peak if peak is not None else None}


def predict(fit: dict, d: float) -> float:
    """R(d) of a fit from `fit_bon` / `fit_rl`."""
    if fit["form"] == "bon":
        return fit["r0"] + d * (fit["alpha"] - fit["beta"] * d)
    return fit["r0"] + (d * (fit["alpha"] - fit["beta"] * math.log(d)) if d > 0 else 0.0)


def peak(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """The observed maximum of ys (first one on ties): {"index", "x", "y"}."""
    if not ys or len(xs) != len(ys):
        raise ValueError("peak needs equally long, non-empty lists")
    i = max(range(len(ys)), key=lambda j: (ys[j], -j))
    return {"index": i, "x": xs[i], "y": ys[i]}
