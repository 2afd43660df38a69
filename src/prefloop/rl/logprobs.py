"""Token log-probabilities and entropies from logits, temperature-scaled (docs/ppo.md item 5)."""

from __future__ import annotations

import torch


def _rows(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # One (T, V) slice at a time bounds the temporary float32 copies to a single row, which matters for
    # bf16 logits with large vocabularies. `split` (not indexing) keeps the backward a single concatenation.
    return logits.split(1, dim=0)


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities of `tokens` under softmax(logits / temperature).

    logits: (B, T, V), any float dtype (computed in float32 or wider); tokens: (B, T) int64 ids.
    Returns (B, T) float32 (float64 for float64 logits): log p(token_t) = z_t[token_t] - logsumexp(z_t),
    with z = logits / temperature. The same temperature must be used for the old, new and reference
    log-probs (Huang et al. 2023, "The N Implementation Details of RLHF with PPO", detail 5).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = []
    for row, tok in zip(_rows(logits), tokens.split(1, dim=0)):
        z = row.float() if row.dtype not in (torch.float32, torch.float64) else row
        if temperature != 1.0:
            z = z / temperature
        picked = z.gather(-1, tok.long().unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(z, dim=-1))
    if not out:  # B == 0
        return logits.new_zeros(tokens.shape, dtype=torch.promote_types(logits.dtype, torch.float32))
    return torch.cat(out, dim=0)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position.

    logits: (B, T, V). Returns (B, T): H = -sum_v p_v log p_v with p = softmax(logits / temperature);
    xlogy makes vocabulary entries with logit -inf (p = 0) contribute 0 instead of nan.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = []
    for row in _rows(logits):
        z = row.float() if row.dtype not in (torch.float32, torch.float64) else row
        if temperature != 1.0:
            z = z / temperature
        p = torch.softmax(z, dim=-1)
        out.append(-torch.special.xlogy(p, p).sum(-1))
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.promote_types(logits.dtype, torch.float32))
    return torch.cat(out, dim=0)
