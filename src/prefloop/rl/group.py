"""Critic-free policy gradient over groups of K samples per prompt: GRPO and RLOO (pure tensor math).

Layout: a rollout of B = P * K responses holds the K samples of each prompt in consecutive rows
(rows g*K .. g*K + K - 1 are group g). Scores are one scalar per response, (B,); the baseline comes from
the other samples of the same prompt instead of a learned critic.

- `group_advantages`: GRPO (Shao et al. 2024, DeepSeekMath, section 4.1.2, outcome supervision):
  A_i = (r_i - mean(r_group)) / (std(r_group) + eps), or without the division (Liu et al. 2025,
  "Understanding R1-Zero-Like Training", Dr. GRPO), which removes the bias towards low-variance prompts.
- `leave_one_out_advantages`: RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
  Ahmadian et al. 2024, "Back to Basics", eq. 6): A_i = r_i - mean_{j != i} r_j.
- `kl_penalised_scores`: KL folded into the reward, r_i - beta * sum_t k1_t (Ahmadian et al. 2024, eq. 2).
- `pg_loss_token_mean` / `pg_loss_sequence_mean`: the clipped surrogate of PPO (Schulman et al. 2017,
  eq. 7) with sequence-level advantages broadcast over the tokens, optionally plus beta * k3 KL as a loss
  term (Shao et al. 2024, eq. 3-4), averaged over all tokens of the batch or per sequence first.

Every function returns (value, stats): `Stats`, python floats with namespaced keys (`prefloop.rl.stats`).
"""

from __future__ import annotations

import torch

from .kl import kl_k1, kl_k3
from .stats import Stats, masked_mean, masked_sum, to_stats


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B / K, K), checking that the rows split into whole groups of at least two."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"a group needs at least 2 samples per prompt, got group_size={group_size}")
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    s = scores.detach()
    return (s if s.dtype in (torch.float32, torch.float64) else s.float()).view(-1, group_size)


def group_advantages(
    scores: torch.Tensor,
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, Stats]:
    """GRPO's group-relative advantages (Shao et al. 2024, section 4.1.2).

    scores: (B,) with the K = group_size samples of each prompt in consecutive rows. Returns (B,):
    (r_i - mean_g) / (std_g + eps) with the unbiased standard deviation of the group (divide by K - 1, as
    torch.std), or r_i - mean_g when scale_by_std is False (Dr. GRPO, Liu et al. 2025). A group whose
    samples all score the same gets advantage 0 (no learning signal from that prompt).
    stats: rollout/group_std (mean over groups), rollout/zero_std_fraction (share of groups with std 0).
    """
    g = _groups(scores, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True)
    adv = centred / (std + eps) if scale_by_std else centred
    stats = to_stats({"rollout/group_std": std.mean(), "rollout/zero_std_fraction": (std == 0).float().mean()})
    return adv.reshape(-1), stats


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, Stats]:
    """RLOO advantages r_i - mean_{j != i} r_j (Kool et al. 2019; Ahmadian et al. 2024, eq. 6).

    scores: (B,) with the K = group_size samples of each prompt in consecutive rows; returns (B,). Each
    sample's baseline is the mean of the other K - 1, so it is independent of the sample itself and the
    estimator stays unbiased. Computed as (K * r_i - sum_g) / (K - 1).
    stats: rollout/group_std (mean unbiased std over groups), rollout/zero_std_fraction.
    """
    g = _groups(scores, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    std = g.std(dim=1, keepdim=True)
    stats = to_stats({"rollout/group_std": std.mean(), "rollout/zero_std_fraction": (std == 0).float().mean()})
    return (g - baseline).reshape(-1), stats


def kl_penalised_scores(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, Stats]:
    """KL folded into the reward: r_i - beta * sum_t (log pi(a_t) - log pi_ref(a_t)) (Ahmadian et al. 2024,
    eq. 2; the sequence-level form of Ziegler et al. 2019's per-token penalty, docs/ppo.md item 13).

    scores: (B,); logprobs, ref_logprobs, mask: (B, T) of the sampled tokens. Returns (B,) without gradient.
    stats: kl/k1 (mean over sequences of the summed k1), rollout/kl_penalty (mean of -beta * that).
    """
    with torch.no_grad():
        kl = masked_sum(kl_k1(logprobs.detach().float(), ref_logprobs.detach().float()), mask, dim=1)
        out = scores.detach().float() - kl_coef * kl
        stats = to_stats({"kl/k1": kl.mean(), "rollout/kl_penalty": -kl_coef * kl.mean()})
    return out, stats


def _surrogate_terms(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, kl_coef):
    """Per-token loss terms: clipped surrogate (B, T), k3 KL (B, T) or None, clipped indicator, log-ratio."""
    m = mask.bool()
    new = logprobs if logprobs.dtype in (torch.float32, torch.float64) else logprobs.float()
    old = new.detach() if old_logprobs is None else old_logprobs.detach().to(new.dtype)
    adv = advantages.detach().to(new.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1).expand_as(new)
    # Zero the log-ratio at padding before exp, so garbage there reaches neither the loss nor the gradient.
    log_ratio = torch.where(m, new - old, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.maximum(unclipped, clipped)
    kl = None
    if ref_logprobs is not None and kl_coef != 0.0:
        kl = kl_k3(torch.where(m, new, 0.0), torch.where(m, ref_logprobs.detach().to(new.dtype), 0.0))
    return surrogate, kl, clipped > unclipped, log_ratio


def _loss_stats(loss, pg, kl_loss, is_clipped, log_ratio, m) -> Stats:
    named = {"loss/total": loss, "loss/policy": pg,
             "policy/clipfrac": masked_mean(is_clipped.float(), m),
             "policy/approxkl": masked_mean(0.5 * log_ratio**2, m),
             "policy/ratio_mean": masked_mean(torch.exp(log_ratio), m)}
    if kl_loss is not None:
        named["loss/kl"] = kl_loss
    return to_stats(named)


def pg_loss_token_mean(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate (+ beta * k3 KL) averaged over every real token of the batch.

    logprobs: (B, T) log pi_theta(a_t | s_t) with gradient; old_logprobs: (B, T) of the sampling policy, or
    None for the on-policy case (old = logprobs detached: ratio 1, the gradient of REINFORCE,
    -A * grad log pi); advantages: (B,) per sequence (broadcast over its tokens) or (B, T); mask: (B, T);
    ref_logprobs: (B, T) of the reference policy for the KL loss term, used when kl_coef != 0.
    Per token: max(-A r_t, -A clip(r_t, 1 - eps, 1 + eps)) + kl_coef * k3_t, r_t = exp(logprobs - old)
    (Schulman et al. 2017, eq. 7; Shao et al. 2024, eq. 3 with the k3 estimator of eq. 4). Token-level
    averaging: sum over all real tokens / their number, so each token weighs the same and long responses
    weigh more (DAPO, Yu et al. 2025; the length bias of the per-sequence mean is Liu et al. 2025's point).
    stats: loss/total, loss/policy, loss/kl (when KL is in the loss), policy/clipfrac, policy/approxkl
    (k2 of the ratio), policy/ratio_mean, all token means.
    """
    m = mask.bool()
    surrogate, kl, is_clipped, log_ratio = _surrogate_terms(logprobs, old_logprobs, ref_logprobs, advantages, m,
                                                            clip_eps, kl_coef)
    pg = masked_mean(surrogate, m)
    kl_loss = masked_mean(kl, m) if kl is not None else None
    loss = pg + kl_coef * kl_loss if kl_loss is not None else pg
    with torch.no_grad():
        stats = _loss_stats(loss, pg, kl_loss, is_clipped, log_ratio, m)
    return loss, stats


def pg_loss_sequence_mean(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """As `pg_loss_token_mean`, but averaged per sequence first, then over sequences (GRPO's
    1/G sum_i 1/|o_i| sum_t, Shao et al. 2024, eq. 3): every response weighs the same whatever its length.

    Shapes and stats as `pg_loss_token_mean`; loss/policy and loss/kl are means over sequences of the
    per-sequence token means. A row with no real token contributes 0 to the sum but still counts in B.
    """
    m = mask.bool()
    surrogate, kl, is_clipped, log_ratio = _surrogate_terms(logprobs, old_logprobs, ref_logprobs, advantages, m,
                                                            clip_eps, kl_coef)
    pg = masked_mean(surrogate, m, dim=1).mean()
    kl_loss = masked_mean(kl, m, dim=1).mean() if kl is not None else None
    loss = pg + kl_coef * kl_loss if kl_loss is not None else pg
    with torch.no_grad():
        stats = _loss_stats(loss, pg, kl_loss, is_clipped, log_ratio, m)
    return loss, stats
