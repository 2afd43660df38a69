"""Over-optimisation (Goodhart): best-of-n curves, the exact KL of best-of-n, and the functional forms of
Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") fitted by least squares.

Pure Python, with numpy for the least-squares fits and the bootstrap of `fit_quality`.
docs/EVALUATION.md, "Fits of over-optimisation".
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


def _lstsq(features: list[list[float]], y: list[float]) -> list[float]:
    """Least squares for y = sum_j c_j f_j (columns `features`), by `numpy.linalg.lstsq` (SVD). A design of
    lower rank than its k columns (too few distinct distances) has no unique fit and is refused."""
    import numpy as np

    a = np.array(features, dtype=np.float64).T  # (points, k)
    coef, _, rank, _ = np.linalg.lstsq(a, np.array(y, dtype=np.float64), rcond=None)
    if rank < a.shape[1]:
        raise ValueError("the fit needs more distinct non-zero distances than it has parameters")
    return [float(c) for c in coef]


def _fit(form: str, d: Sequence[float], r: Sequence[float], r0: float | None) -> tuple[float, float, float]:
    """alpha, beta, R(0) of a Gao et al. form. R(0) is `r0` when given, the reward at d = 0 when the data has
    that point (best-of-n at n = 1), and a third fitted parameter otherwise (an RL run's first log is
    already past d = 0)."""
    if len(d) != len(r) or not d:
        raise ValueError("the fit needs as many rewards as distances, at least one")
    if any(x < 0 for x in d):
        raise ValueError("distances d = sqrt(KL) must be >= 0")
    if r0 is None and 0.0 in d:
        r0 = r[list(d).index(0.0)]
    f1 = list(d)
    f2 = [-x * x for x in d] if form == "bon" else [-x * math.log(x) if x > 0 else 0.0 for x in d]
    if r0 is not None:
        alpha, beta = _lstsq([f1, f2], [v - r0 for v in r])
        return alpha, beta, r0
    alpha, beta, base = _lstsq([f1, f2, [1.0] * len(d)], list(r))
    return alpha, beta, base


def fit_bon(d: Sequence[float], r: Sequence[float], r0: float | None = None) -> dict:
    """Fit R(d) = R(0) + d (alpha - beta d) (Gao et al. 2022, eq. 1, best-of-n) by least squares.

    Returns alpha, beta, r0 and the peak d* = alpha / (2 beta) (None when beta <= 0 or alpha <= 0: no
    peak) with its KL = d*^2."""
    alpha, beta, base = _fit("bon", d, r, r0)
    peak = alpha / (2 * beta) if beta > 0 and alpha > 0 else None
    return {"form": "bon", "alpha": alpha, "beta": beta, "r0": base, "peak_d": peak,
            "peak_kl": peak * peak if peak is not None else None}


def fit_rl(d: Sequence[float], r: Sequence[float], r0: float | None = None) -> dict:
    """Fit R(d) = R(0) + d (alpha - beta log d) (Gao et al. 2022, eq. 2, RL) by least squares.

    dR/dd = alpha - beta (log d + 1) = 0 gives the peak d* = exp(alpha / beta - 1) (None when beta <= 0).
    Points at d = 0 are kept (d log d -> 0)."""
    alpha, beta, base = _fit("rl", d, r, r0)
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


def fit_quality(form: str, d: Sequence[float], r: Sequence[float], r0: float | None = None, resamples: int = 300,
                seed: int = 0, min_points: int = 6, min_r2: float = 0.5) -> dict:
    """How far a Gao et al. fit can be trusted: R^2 of the fit, and a 95% interval on its peak KL from refitting
    on points resampled with replacement (a pairs bootstrap; the share of resamples whose fit has a peak at all).

    `supported` is False, with a `reason` to print instead of the curve, when there are fewer than `min_points`
    points or the fit explains less than `min_r2` of the variance."""
    import numpy as np

    fitter = fit_bon if form == "bon" else fit_rl
    n = len(d)
    out: dict = {"points": n, "r2": None, "peak_kl_ci": None, "peak_share": None}
    try:
        f = fitter(d, r, r0)
    except ValueError as e:
        return {**out, "supported": False, "reason": f"the fit is singular ({e})"}
    resid = [y - predict(f, x) for x, y in zip(d, r)]
    mean_r = sum(r) / n
    ss_tot = sum((y - mean_r) ** 2 for y in r)
    out["r2"] = 1 - sum(e * e for e in resid) / ss_tot if ss_tot > 0 else None
    rng = np.random.default_rng(seed)
    peaks, fits = [], 0
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        try:
            g = fitter([d[i] for i in idx], [r[i] for i in idx], r0)
        except ValueError:
            continue
        fits += 1
        if g["peak_kl"] is not None:
            peaks.append(g["peak_kl"])
    if fits:
        out["peak_share"] = len(peaks) / fits
    if len(peaks) >= 20:
        out["peak_kl_ci"] = [float(np.quantile(peaks, 0.025)), float(np.quantile(peaks, 0.975))]
    if n < min_points:
        return {**out, "supported": False, "reason": f"only {n} points, fewer than the {min_points} a "
                                                      "three-parameter curve needs to be tested"}
    if out["r2"] is None or out["r2"] < min_r2:
        r2 = "undefined" if out["r2"] is None else f"{out['r2']:.2f}"
        return {**out, "supported": False, "reason": f"the fit explains too little of the variation (R^2 = {r2}, "
                                                      f"below {min_r2}): the points are mostly noise at this size"}
    return {**out, "supported": True, "reason": ""}
