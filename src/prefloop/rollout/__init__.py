"""Rollouts: the engine interface, batched sampling with a KV cache (continuous batching), and the full
forwards that recompute its log-probs."""

from .engine import LocalEngine, RolloutEngine
from .forward import response_logprobs
from .sampler import SampleOutput, SamplingConfig, sample

__all__ = [
    "LocalEngine",
    "RolloutEngine",
    "SampleOutput",
    "SamplingConfig",
    "response_logprobs",
    "sample",
]
