"""Per-token rewards and generalised advantage estimation over right-padded responses.

Responses are (B, R) with a mask that is 1 for a prefix of each row (up to and including EOS) and 0 after
(docs/ppo.md item 6). Everything returned is 0 after the mask.
"""

from __future__ import annotations

import torch


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: a KL penalty at every real token plus the sequence score at the last one.

    scores: (B,) reward-model scores; logprobs, ref_logprobs, mask: (B, R). Returns (rewards, kl), both
    (B, R): kl_t = log pi(a_t) - log pi_ref(a_t) (k1) at real tokens and 0 after; rewards_t = -kl_coef * kl_t,
    plus scores[b] at the last real token of row b (Ziegler et al. 2019 eq. 2; Stiennon et al. 2020 eq. 1;
    docs/ppo.md item 13). A row with no real token gets no score and is all 0. No gradient flows to the outputs.
    """
    m = mask.bool()
    with torch.no_grad():
        kl = torch.where(m, logprobs.detach() - ref_logprobs.detach(), 0.0)
        rewards = -kl_coef * kl
        R = m.shape[1]
        if R == 0:
            return rewards, kl
        # Index of the last real token per row: the largest (t + 1) * mask_t, minus 1; -1 for an empty row.
        last = (m.long() * torch.arange(1, R + 1, device=m.device)).max(dim=1).values - 1
        score = torch.where(last >= 0, scores.detach().to(rewards.dtype), 0.0)
        rewards.scatter_add_(1, last.clamp(min=0).unsqueeze(1), score.unsqueeze(1))
    return rewards, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", eq. 11-16).

    rewards, values, mask: (B, R). delta_t = r_t + gamma * V_{t+1} - V_t and
    A_t = delta_t + gamma * lam * A_{t+1}, where the episode ends at the last real token (the value after it
    is 0). Returns (advantages, returns), both (B, R), returns = advantages + values, 0 where the mask is 0.
    They are targets: no gradient flows.
    """
    m = mask.bool()
    with torch.no_grad():
        r = torch.where(m, rewards.detach(), 0.0)
        v = torch.where(m, values.detach().to(r.dtype), 0.0)
        B, R = r.shape
        adv = torch.zeros_like(r)
        next_adv = r.new_zeros(B)
        next_value = r.new_zeros(B)
        # Backwards over time (R is small); `alive` zeroes the bootstrap past the last real token.
        for t in reversed(range(R)):
            alive = m[:, t + 1].to(r.dtype) if t + 1 < R else r.new_zeros(B)
            delta = r[:, t] + gamma * alive * next_value - v[:, t]
            next_adv = delta + gamma * lam * alive * next_adv
            adv[:, t] = next_adv
            next_value = v[:, t]
        adv = torch.where(m, adv, 0.0)
        returns = torch.where(m, adv + v, 0.0)
    return adv, returns
