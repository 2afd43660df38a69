"""Forward passes that read rewards and values from sequence classifiers and value heads.

All functions take prompt+response token ids with an attention mask that may have left padding
(prompts) and right padding (responses) at once; position ids always skip the pads.
"""

from __future__ import annotations

import torch
from torch import nn


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding (docs/ppo.md item 2): (B, T) mask -> (B, T) long. Every forward uses
    this one (training, scoring and the sampler). Left pads get position 0 (they are masked anyway); right
    pads repeat the last real position."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def trunk(model: nn.Module) -> nn.Module:
    """The transformer body of an HF model (`model.model` for Llama, `model.transformer` for GPT-2...)."""
    return getattr(model, model.base_model_prefix)


def hidden_states(model, input_ids, attention_mask) -> torch.Tensor:
    out = trunk(model)(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask), use_cache=False)
    return out.last_hidden_state


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (docs/ppo.md item 8), for any mix of left and right padding."""
    idx = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (idx * attention_mask.long()).argmax(-1)


def sequence_scores(reward_model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B,) rewards read at the last non-pad token."""
    h = hidden_states(reward_model, input_ids, attention_mask)
    last = last_token_index(attention_mask)
    h_last = h[torch.arange(h.shape[0], device=h.device), last]
    return reward_model.score(h_last).squeeze(-1).float()


class ValueHead(nn.Module):
    """A scalar head on the policy trunk, initialised at zero (docs/ppo.md item 9): the cheaper critic."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # fp32 head on a bf16 trunk (a LoRA policy's frozen base under bf16) outside autocast: cast to its dtype
        return self.linear(h.to(self.linear.weight.dtype)).squeeze(-1)
