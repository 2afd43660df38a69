"""The rollout engine: the one interface between the recipes and whatever generates their samples.

Every generation in prefloop (RL rollouts, `prefloop sample`, best-of-n, evaluation) asks an engine for one
response per prompt and gets a `SampleOutput` back: token ids, masks, the sampling log-probs and which rows
ended. An RL recipe tells the engine about new weights after each optimizer step (`update_weights`). prefloop
ships one engine, `LocalEngine`, which samples with the policy module itself; docs/ROLLOUT.md says what another
engine (vLLM, SGLang) must return to take its place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .sampler import SampleOutput, SamplingConfig, sample

__all__ = ["LocalEngine", "RolloutEngine"]


@runtime_checkable
class RolloutEngine(Protocol):
    """What generates rollouts. Conventions (docs/ROLLOUT.md): prompts come left padded, (B, P); the result
    has one row per prompt in the same order, responses right padded with `cfg.pad_token_id`, the end token
    kept and masked in, and `logprobs` = log softmax(logits / T) of each sampled token under the weights of
    the last `update_weights` (before top-k/top-p), fp32, 0 at pads."""

    def generate(self, query_ids: torch.Tensor, query_mask: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator | None = None) -> SampleOutput:
        """One response per prompt; `generator` seeds the draws (same seed, same samples)."""
        ...

    def update_weights(self, model: nn.Module) -> None:
        """Sample from `model`'s current weights from now on (call after each optimizer step)."""
        ...


class LocalEngine:
    """prefloop's engine: the KV-cache sampler (`sampler.sample`) on the model module itself, in this process.

    `slots` rows decode together (continuous batching: a row that ends gives its slot to the next prompt;
    None = all rows at once), so the KV cache holds at most `slots` rows. The engine holds the module, not a
    copy: an optimizer step is seen at once, and `update_weights` only matters when the module itself changes
    (a new object, or a wrapper unwrapped anew).
    """

    def __init__(self, model: nn.Module, slots: int | None = None):
        self.model, self.slots = model, slots

    def update_weights(self, model: nn.Module) -> None:
        self.model = model

    def generate(self, query_ids: torch.Tensor, query_mask: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator | None = None) -> SampleOutput:
        return sample(self.model, query_ids, query_mask, cfg, generator=generator, micro_batch_size=self.slots)
