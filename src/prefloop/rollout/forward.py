"""Response log-probs of a sampled batch under a model, and the model-signature probes the sampler needs.

`response_logprobs` is the reference the sampler must agree with (docs/ppo.md item 19: the gap between the
log-probs seen while sampling and those recomputed for training should be ~0); it runs the same forward as
PPO and GRPO training (`prefloop.models.ResponseForward`).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from prefloop.models import ResponseForward

__all__ = ["response_logprobs"]


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


def response_logprobs(
    model: nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Temperature-scaled log-probs of the response tokens under `model`, one forward over query+response.

    Shapes: query (B, P) left padded, response (B, R). Returns logprobs (B, R) = log softmax(logits / T)
    at each response token (docs/ppo.md item 5), 0 where `response_mask` is 0; with `entropy` also the
    entropies (B, R) of the policy at those positions, at the same temperature (0 after the response).
    """
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask.to(response_mask.dtype), response_mask], dim=1)
    logprobs, ent, _ = ResponseForward(model)(input_ids, attention_mask, response_ids, temperature, entropy)
    return (logprobs, ent) if entropy else logprobs
