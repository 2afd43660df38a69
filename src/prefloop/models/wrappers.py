"""Training forwards as modules, so DDP (accelerate.prepare) wraps the whole computation.

Each computes only what its loss needs: the LM head runs only at positions whose next token is a
target (the prompt and padding cost no vocabulary projection), and reward reads one position per row.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import hidden_states, sequence_scores
from .logits import hidden_logprobs


class CausalLMLoss(nn.Module):
    """Sum of next-token negative log-likelihood over labelled positions (labels -100 are skipped)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, labels):
        h = hidden_states(self.lm, input_ids, attention_mask)[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        return -hidden_logprobs(self.lm, h[keep], targets[keep]).logprobs.sum()


class RewardScorer(nn.Module):
    """Reward model forward: (B, T) ids -> (B,) scores at the last real token."""

    def __init__(self, reward_model):
        super().__init__()
        self.rm = reward_model

    def forward(self, input_ids, attention_mask):
        return sequence_scores(self.rm, input_ids, attention_mask)


class ResponseForward(nn.Module):
    """Policy (and optionally value-head) forward over query+response: log-probs of the response tokens.

    input_ids, attention_mask: (B, P + R) query then response; response_ids: (B, R). Returns log-probs
    (B, R) at `temperature` (0 after the response), entropies (B, R) (detached) when asked for, and values
    (B, R) when the policy carries a value head. Log-probs and the critic's V(s_t) are read at the same
    positions: the state before response token t. Only real response tokens are projected onto the
    vocabulary, a chunk at a time (`hidden_logprobs`).
    """

    def __init__(self, lm, value_head: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.value_head = value_head

    def forward(self, input_ids, attention_mask, response_ids, temperature: float = 1.0, entropy: bool = False):
        R = response_ids.shape[1]
        h = hidden_states(self.lm, input_ids, attention_mask)[:, -R - 1:-1]
        keep = attention_mask[:, -R:].bool()
        lp = hidden_logprobs(self.lm, h[keep], response_ids[keep], temperature, entropy=entropy)
        logprobs = lp.logprobs.new_zeros(keep.shape).masked_scatter(keep, lp.logprobs)
        ent = None if lp.entropy is None else lp.entropy.new_zeros(keep.shape).masked_scatter(keep, lp.entropy)
        values = self.value_head(h).float() if self.value_head is not None else None
        return logprobs, ent, values


class CriticForward(nn.Module):
    """A separate critic (a sequence classifier, initialised from the reward model): values (B, R)."""

    def __init__(self, critic):
        super().__init__()
        self.critic = critic

    def forward(self, input_ids, attention_mask, response_len: int):
        h = hidden_states(self.critic, input_ids, attention_mask)[:, -response_len - 1:-1]
        return self.critic.score(h).squeeze(-1).float()


def score_in_batches(scorer: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch: int = 64) -> torch.Tensor:
    out = [scorer(ids[i:i + batch], mask[i:i + batch]) for i in range(0, ids.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0)
