"""Rollouts: batched sampling with a KV cache, and the full forwards that recompute its log-probs."""

from .forward import response_logprobs
from .sampler import SampleOutput, SamplingConfig, sample

__all__ = [
    "SampleOutput",
    "SamplingConfig",
    "response_logprobs",
    "sample",
]
