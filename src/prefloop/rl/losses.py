"""Losses as pure functions returning (loss, stats): Bradley-Terry reward loss, PPO policy and value losses.

stats: `Stats` (`prefloop.rl.stats`), python floats with namespaced keys, ready for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .stats import Stats, masked_mean, to_stats


def _f32(x: torch.Tensor) -> torch.Tensor:
    # Losses are computed in at least float32, also when autocast hands over bf16 logits or values.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Pairwise reward-model loss -log sigmoid(r_chosen - r_rejected - margin), mean over pairs.

    chosen, rejected: (B,) scalar rewards of the preferred and the other response; margin: (B,) or None, a
    required gap for pairs labelled as clearly better (Touvron et al. 2023, Llama 2, eq. 2). The Bradley-Terry
    model of Ouyang et al. 2022 eq. 1 / Stiennon et al. 2020 eq. 1 is margin = 0.
    stats: loss/reward, reward/accuracy (chosen strictly above rejected; a tie counts as wrong),
    reward/margin (mean r_chosen - r_rejected), reward/chosen, reward/rejected (means).
    """
    chosen, rejected = _f32(chosen), _f32(rejected)
    diff = chosen - rejected
    logits = diff if margin is None else diff - margin.to(diff.dtype)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        stats = to_stats({
            "loss/reward": loss,
            "reward/accuracy": (chosen > rejected).float().mean(),
            "reward/margin": diff.mean(),
            "reward/chosen": chosen.mean(),
            "reward/rejected": rejected.mean(),
        })
    return loss, stats


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, Stats]:
    """Negated PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7).

    logprobs: (B, T) log pi_theta(a_t | s_t), with gradient; old_logprobs: (B, T) from the rollout policy;
    advantages: (B, T); mask: (B, T). Per token, with ratio = exp(logprobs - old_logprobs):
    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)); the loss is its mean over all real tokens of the
    batch.
    old_logprobs and advantages are constants (detached).
    stats: loss/policy; policy/clipfrac (share of tokens where the clipped term is strictly larger, i.e. the
    gradient is 0); policy/approxkl (mean 0.5 * (log ratio)^2, k2, as in Huang et al. 2023);
    policy/approxkl_k3 (mean k3 estimate of KL(pi_old || pi_theta)); policy/ratio_mean.
    """
    m = mask.bool()
    old = _f32(old_logprobs.detach())
    # Zero the log-ratio at padding before exp, so garbage there can give neither inf nor nan gradients.
    log_ratio = torch.where(m, _f32(logprobs) - old, 0.0)
    adv = torch.where(m, _f32(advantages.detach()), 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = to_stats({
            "loss/policy": loss,
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), m),
            "policy/approxkl": masked_mean(0.5 * log_ratio**2, m),
            # k3 = (r - 1) - log r with samples from pi_old, r = pi_theta / pi_old (Schulman 2020).
            "policy/approxkl_k3": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "policy/ratio_mean": masked_mean(ratio, m),
        })
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, Stats]:
    """Clipped value loss 0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2), masked mean.

    values: (B, T) V_phi(s_t), with gradient; old_values: (B, T) from the rollout; returns: (B, T) GAE
    targets; mask: (B, T). As in OpenAI baselines' ppo2 and lm-human-preferences (docs/ppo.md item 16);
    old_values and returns are constants. stats: loss/value, value/clipfrac (share of tokens where the
    clipped term is strictly larger), value/mean (masked mean of V).
    """
    m = mask.bool()
    # Padding is zeroed first so that non-finite garbage there cannot reach the gradient.
    v = torch.where(m, _f32(values), 0.0)
    old = torch.where(m, _f32(old_values.detach()), 0.0)
    ret = torch.where(m, _f32(returns.detach()), 0.0)
    v_clipped = old + torch.clamp(v - old, -clip_eps, clip_eps)
    unclipped = (v - ret) ** 2
    clipped = (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = to_stats({
            "loss/value": loss,
            "value/clipfrac": masked_mean((clipped > unclipped).float(), m),
            "value/mean": masked_mean(v, m),
        })
    return loss, stats
