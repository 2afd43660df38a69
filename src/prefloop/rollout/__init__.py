"""Rollouts: batched sampling with a KV cache, and the full forwards that recompute its log-probs."""

from .forward import model_logits, position_ids_from_mask, response_logprobs
from .sampler import SampleOutput, SamplingConfig, sample

__all__ = [
    "SampleOutput",
    "SamplingConfig",
    "model_logits",
    "position_ids_from_mask",
    "response_logprobs",
    "sample",
]
