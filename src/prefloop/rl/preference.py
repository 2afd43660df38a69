"""Preference losses beyond one Bradley-Terry pair: the DPO family, K-way rankings and absolute ratings.

Pure functions of tensors (imports torch only). Each returns `(loss, stats)`; `stats` maps namespaced
keys to python floats (`prefloop.rl.stats.Stats`, one device-to-host transfer per call). Log-probabilities
passed to the DPO family are per *sequence* (the response tokens only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .stats import Stats, to_stats


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# -- the DPO family -----------------------------------------------------------------------------------------

def implicit_rewards(
    logps: torch.Tensor, ref_logps: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO's implicit reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5,
    without the prompt-only term beta * log Z(x), which cancels in every pairwise comparison).

    logps, ref_logps: (B,) sequence log-probs. Returns (B,).
    """
    return beta * (_f32(logps) - _f32(ref_logps))


def _dpo_stats(loss, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> Stats:
    with torch.no_grad():
        rc = implicit_rewards(chosen_logps, ref_chosen_logps, beta)
        rr = implicit_rewards(rejected_logps, ref_rejected_logps, beta)
        return to_stats({
            "loss/dpo": loss,
            "rewards/chosen": rc.mean(),
            "rewards/rejected": rr.mean(),
            "rewards/accuracy": (rc > rr).float().mean(),
            "rewards/margin": (rc - rr).mean(),
            "logps/chosen": _f32(chosen_logps).mean(),
            "logps/rejected": _f32(rejected_logps).mean(),
        })


def _log_ratio_gap(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps) -> torch.Tensor:
    # h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)); the reference terms are constants.
    return (_f32(chosen_logps) - _f32(ref_chosen_logps).detach()) - (
        _f32(rejected_logps) - _f32(ref_rejected_logps).detach())


def dpo_sigmoid_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Stats]:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7): mean over pairs of
    -log sigmoid(beta * h), h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)].

    All inputs (B,) sequence log-probs of the chosen (y_w) and rejected (y_l) responses under the policy
    (with gradient) and the frozen reference. prefloop passes sums over response tokens, as the paper does.
    stats: loss/dpo; rewards/chosen, rewards/rejected (means of the implicit rewards beta * (logp - ref));
    rewards/accuracy (implicit chosen reward strictly above rejected); rewards/margin (mean difference);
    logps/chosen, logps/rejected (mean policy log-probs).
    """
    h = _log_ratio_gap(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = -F.logsigmoid(beta * h).mean()
    return loss, _dpo_stats(loss, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


def cdpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> tuple[torch.Tensor, Stats]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO"):
    each label is assumed flipped with probability eps, so the target is a smoothed label:
    mean of -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h), h as in `dpo_sigmoid_loss`.

    eps = 0 is DPO. Unlike DPO, the loss has a finite minimum at beta * h = log((1 - eps) / eps), so the
    implicit margin stops growing once it is reached. Shapes and stats as in `dpo_sigmoid_loss`.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = _log_ratio_gap(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)).mean()
    return loss, _dpo_stats(loss, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, Stats]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17, with tau = beta): mean over pairs of (h - 1 / (2 * beta))^2, h as in DPO.

    A squared loss regresses the log-ratio gap to a fixed target instead of pushing it to infinity, so a
    deterministic preference cannot drive the policy arbitrarily far from the reference.
    Choice of log-probs: prefloop's DPO recipe passes *per-token averages* over the response for IPO (sums
    for DPO and cDPO). The target 1 / (2 beta) is a fixed number of nats; with sums, h grows with the
    response length, so one target would ask for a much smaller per-token change on long responses than
    on short ones. Averages make the target the same per-token change for every pair.
    Shapes (B,); stats as in `dpo_sigmoid_loss` (implicit rewards from the log-probs given).
    """
    h = _log_ratio_gap(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _dpo_stats(loss, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


# -- rankings -------------------------------------------------------------------------------------------------

def _pair_masks(ranks: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """better[n, i, j]: response i strictly ranked above j (both real); returns (better, real)."""
    real = torch.ones_like(ranks, dtype=torch.bool) if mask is None else mask.bool()
    both = real.unsqueeze(2) & real.unsqueeze(1)
    return (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & both, real


def ranking_pairs_loss(
    scores: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """InstructGPT's ranking loss (Ouyang et al. 2022, eq. 1): every pair of a K-way ranking is a
    Bradley-Terry comparison, all pairs of a ranking in one batch, each ranking weighted 1 / C(K, 2).

    scores: (N, K) rewards of the K responses of N rankings; ranks: (N, K) integer rank of each response,
    0 = best (equal ranks are ties: those pairs are skipped); mask: (N, K) bool, False for padding when
    rankings have fewer than K responses (None: all real).
    loss = mean over rankings n of (1 / P_n) * sum over pairs (i above j) of -log sigmoid(s_i - s_j),
    where P_n is the number of untied pairs of ranking n (C(K_n, 2) without ties), so every ranking weighs
    the same; rankings without an untied pair are left out of the mean.
    stats: loss/reward; reward/accuracy (share of all untied pairs ordered strictly right);
    reward/margin (mean s_i - s_j over those pairs); reward/pairs (number of pairs).
    """
    s = _f32(scores)
    better, _ = _pair_masks(ranks, mask)
    diff = s.unsqueeze(2) - s.unsqueeze(1)  # (N, K, K) s_i - s_j
    per_pair = torch.where(better, -F.logsigmoid(diff), 0.0)
    n_pairs = better.sum((1, 2))  # (N,)
    has = n_pairs > 0
    per_ranking = per_pair.sum((1, 2)) / n_pairs.clamp(min=1)
    loss = per_ranking[has].sum() / has.sum().clamp(min=1)
    with torch.no_grad():
        total = better.sum().clamp(min=1)
        stats = to_stats({
            "loss/reward": loss,
            "reward/accuracy": ((diff > 0) & better).sum() / total,
            "reward/margin": torch.where(better, diff, 0.0).sum() / total,
            "reward/pairs": better.sum().float(),
        })
    return loss, stats


def plackett_luce_loss(
    scores: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Plackett-Luce negative log-likelihood of a ranking (Plackett 1975; Luce 1959; used for reward models
    e.g. by Zhu et al. 2023, "Principled RLHF from pairwise or K-wise comparisons"):

        -log P(ranking) = -sum_k [ s_(k) - log sum_{j ranked k or lower} exp(s_j) ]

    the best response is picked from all K with a softmax, the second from the rest, and so on. Ties use
    Breslow's convention: a response's choice set holds every response ranked at or below it. Each
    ranking's NLL is divided by K_n - 1 (the number of non-trivial choices), so K = 2 is exactly the
    Bradley-Terry loss and the scale does not grow with K; the loss is the mean over rankings.
    Shapes as in `ranking_pairs_loss`: scores (N, K), ranks (N, K) with 0 = best, mask (N, K) or None.
    stats: loss/reward; reward/accuracy and reward/margin over all untied pairs, as in `ranking_pairs_loss`.
    """
    s = _f32(scores)
    better, real = _pair_masks(ranks, mask)
    # in_set[n, i, j]: j is in the choice set of i (real, ranked at or below i).
    in_set = (ranks.unsqueeze(1) >= ranks.unsqueeze(2)) & real.unsqueeze(1) & real.unsqueeze(2)
    # Padding gets itself as choice set: an empty set would give -inf and a nan gradient through the where.
    in_set = in_set | torch.eye(s.shape[1], dtype=torch.bool, device=s.device)
    denom = torch.logsumexp(s.unsqueeze(1).expand_as(in_set).masked_fill(~in_set, float("-inf")), dim=2)
    terms = torch.where(real, s - torch.where(real, denom, 0.0), 0.0)  # (N, K); the worst response adds 0
    k = real.sum(1)
    per_ranking = -terms.sum(1) / (k - 1).clamp(min=1)
    keep = k >= 2
    loss = per_ranking[keep].sum() / keep.sum().clamp(min=1)
    with torch.no_grad():
        diff = s.unsqueeze(2) - s.unsqueeze(1)
        total = better.sum().clamp(min=1)
        stats = to_stats({
            "loss/reward": loss,
            "reward/accuracy": ((diff > 0) & better).sum() / total,
            "reward/margin": torch.where(better, diff, 0.0).sum() / total,
            "reward/pairs": better.sum().float(),
        })
    return loss, stats


# -- ratings --------------------------------------------------------------------------------------------------

def scale_ratings(ratings: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Ratings on their own scales [lo, hi] mapped linearly onto [-1, 1]: 2 (r - lo) / (hi - lo) - 1.

    All (B,) (lo, hi may also be floats). So ratings from a 1-3 and a 1-7 scale share one target range, and
    the middle of any scale is 0.
    """
    r = _f32(ratings)
    return 2.0 * (r - lo) / (hi - lo) - 1.0


def rating_regression_loss(
    predictions: torch.Tensor,
    ratings: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
) -> tuple[torch.Tensor, Stats]:
    """Mean squared error between the reward model's score and the rating mapped onto [-1, 1]
    (`scale_ratings`): mean of (f(x, y) - t)^2, t = 2 (rating - lo) / (hi - lo) - 1.

    predictions, ratings, lo, hi: (B,). stats: loss/rating; rating/mae (mean |f - t| in the [-1, 1] range);
    rating/prediction (mean score).
    """
    p = _f32(predictions)
    t = scale_ratings(ratings, lo, hi).to(p.dtype)
    loss = ((p - t) ** 2).mean()
    with torch.no_grad():
        stats = to_stats({"loss/rating": loss, "rating/mae": (p - t).abs().mean(), "rating/prediction": p.mean()})
    return loss, stats


def ordered_thresholds(raw: torch.Tensor, min_gap: float = 1e-3) -> torch.Tensor:
    """K - 1 strictly increasing thresholds from unconstrained parameters: theta_0 = raw_0,
    theta_k = theta_{k-1} + softplus(raw_k) + min_gap. raw: (K - 1,) -> (K - 1,)."""
    gaps = F.softplus(raw[1:]) + min_gap
    return torch.cat([raw[:1], raw[:1] + torch.cumsum(gaps, 0)])


def _ordinal_log_probs(predictions: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """log P(y = k), (B, K). With a = theta_k - f and b = theta_{k-1} - f (theta_{-1} = -inf,
    theta_{K-1} = +inf): sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(-(a - b))), whose log
    is computed without cancellation."""
    f = _f32(predictions).unsqueeze(1)  # (B, 1)
    th = _f32(thresholds).to(f.dtype)
    inf = torch.full((1,), float("inf"), dtype=f.dtype, device=f.device)
    upper = torch.cat([th, inf]).unsqueeze(0) - f  # (B, K) a
    lower = torch.cat([-inf, th]).unsqueeze(0) - f  # (B, K) b
    gap = torch.cat([inf, th[1:] - th[:-1], inf]).unsqueeze(0)  # a - b, exact and free of f
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-gap))


def ordinal_probs(predictions: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """P(y = k | f) of the cumulative-link model (see `ordinal_rating_loss`): (B,) and (K - 1,) -> (B, K)."""
    return _ordinal_log_probs(predictions, thresholds).exp()


def ordinal_rating_loss(
    predictions: torch.Tensor,
    levels: torch.Tensor,
    thresholds: torch.Tensor,
) -> tuple[torch.Tensor, Stats]:
    """Ordered-logit (cumulative-link) loss for Likert ratings (McCullagh 1980, "Regression models for
    ordinal data", the proportional-odds model): P(y <= k | x) = sigmoid(theta_k - f(x)) for
    k = 0..K-2 with increasing thresholds theta, so P(y = k) = sigmoid(theta_k - f) - sigmoid(theta_{k-1} - f);
    the loss is the mean of -log P(y = level).

    predictions: (B,) the reward model's score f(x, y); levels: (B,) long in 0..K-1 (rating - lo on an
    integer scale); thresholds: (K - 1,) strictly increasing (learn them through `ordered_thresholds`).
    The score is a latent utility: a higher f moves probability to higher levels, and one score orders
    responses whatever the scale, so it serves as a reward.
    stats: loss/rating; rating/accuracy (most probable level is the label); rating/mae (mean |expected
    level - level|, in levels).
    """
    logp = _ordinal_log_probs(predictions, thresholds)
    lv = levels.long()
    loss = -logp.gather(1, lv.unsqueeze(1)).squeeze(1).mean()
    with torch.no_grad():
        p = logp.exp()
        expected = (p * torch.arange(p.shape[1], dtype=p.dtype, device=p.device)).sum(1)
        stats = to_stats({
            "loss/rating": loss,
            "rating/accuracy": (p.argmax(1) == lv).float().mean(),
            "rating/mae": (expected - lv.to(p.dtype)).abs().mean(),
        })
    return loss, stats
