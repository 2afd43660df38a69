"""Plain full forwards over padded batches: logits and response log-probs.

These are the reference computations the sampler must agree with (docs/ppo.md item 19: the gap between the
log-probs seen while sampling and those recomputed for training should be ~0), and the forwards the PPO
update uses for old, new and reference log-probs.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from prefloop.rl import logprobs_from_logits

__all__ = ["model_logits", "position_ids_from_mask", "response_logprobs"]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding (docs/ppo.md item 2): (B, T) mask -> (B, T) long.

    Left pads get position 0 (they are masked anyway); right pads repeat the last real position.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


_KEEP_SUPPORT: dict[type, bool] = {}


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (HF causal LMs do; wrappers may not)."""
    cls = type(model)
    if cls not in _KEEP_SUPPORT:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        _KEEP_SUPPORT[cls] = "logits_to_keep" in params
    return _KEEP_SUPPORT[cls]


_CACHE_KWARG: dict[type, str] = {}


def cache_kwarg(model: nn.Module) -> str:
    """The name under which `model.forward` takes a KV cache: `cache` (transformers >= 5.2x; the old name
    `past_key_values` warns there and goes in 5.40) or `past_key_values` (older releases).

    Wrappers that pass everything through (`forward(**kwargs)`) get the installed transformers' own name.
    """
    cls = type(model)
    if cls not in _CACHE_KWARG:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        if "cache" in params or "past_key_values" in params:
            _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
        else:
            from transformers.modeling_outputs import CausalLMOutputWithPast

            new_api = "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})
            _CACHE_KWARG[cls] = "cache" if new_api else "past_key_values"
    return _CACHE_KWARG[cls]


def model_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Full forward with explicit position ids, no cache: (B, T) ids and mask -> (B, T, V) logits.

    Correct for left- and right-padded input alike, since positions come from the mask.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.logits


def response_logprobs(
    model: nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Temperature-scaled log-probs of the response tokens under `model`, one forward over query+response.

    Shapes: query (B, P) left padded, response (B, R). Returns logprobs (B, R) = log softmax(logits / T)
    at each response token (docs/ppo.md item 5), 0 where `response_mask` is 0; with `return_logits` also the
    unscaled logits (B, R, V) at the positions that predict the response (for the entropy bonus).

    The logits at position t predict token t + 1, so the R predicting positions are P - 1 .. P + R - 2.
    Only those are projected onto the vocabulary when the model takes `logits_to_keep`.
    """
    R = response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask.to(response_mask.dtype), response_mask], dim=1)
    kwargs = {}
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = R + 1
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    )
    logits = out.logits[:, -R - 1 : -1]  # (B, R, V) positions predicting response tokens
    logprobs = logprobs_from_logits(logits, response_ids, temperature)
    logprobs = logprobs.masked_fill(response_mask == 0, 0.0)
    return (logprobs, logits) if return_logits else logprobs
