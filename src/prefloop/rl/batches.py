"""Typed batch containers (docs/DESIGN.md): dataclasses of tensors with their shapes, not dicts.

Every tensor field is indexed by the batch dimension first. `select` slices all of them along it (for
minibatches), `to` moves them; fields left as None (not computed yet) are carried through as None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import torch


class _TensorBatch:
    """Shared behaviour of the batch dataclasses below."""

    def _tensors(self) -> dict[str, torch.Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def _check_batch_dim(self) -> None:
        sizes = {name: t.shape[0] for name, t in self._tensors().items() if t is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{type(self).__name__}: fields disagree on the batch size: {sizes}")

    def __len__(self) -> int:
        """The batch size B."""
        return next((t.shape[0] for t in self._tensors().values() if t is not None), 0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Self:
        """A copy with every tensor on `device`."""
        moved = {k: None if t is None else t.to(device, non_blocking=non_blocking)
                 for k, t in self._tensors().items()}
        return dataclasses.replace(self, **moved)  # type: ignore[type-var]

    def select(self, index: torch.Tensor | Sequence[int]) -> Self:
        """A copy holding rows `index` (a (b,) LongTensor or list of ints) of every tensor, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        picked = {k: None if t is None else t.index_select(0, idx.to(t.device))
                  for k, t in self._tensors().items()}
        return dataclasses.replace(self, **picked)  # type: ignore[type-var]


@dataclass
class RolloutBatch(_TensorBatch):
    """One PPO rollout batch: prompts, sampled responses and everything computed from them.

    B = batch, P = prompt length (left padded), R = response length (right padded after EOS).
    """

    query_ids: torch.Tensor  # (B, P) prompt token ids, left padded
    query_mask: torch.Tensor  # (B, P) 1 at prompt tokens, 0 at the left padding
    response_ids: torch.Tensor  # (B, R) sampled token ids, padded after EOS
    response_mask: torch.Tensor  # (B, R) 1 up to and including EOS, 0 after
    logprobs: torch.Tensor | None = None  # (B, R) log pi_old(a_t | s_t) at sampling time, temperature-scaled
    ref_logprobs: torch.Tensor | None = None  # (B, R) log pi_ref(a_t | s_t), same temperature
    values: torch.Tensor | None = None  # (B, R) V_old(s_t) of the critic at rollout time
    scores: torch.Tensor | None = None  # (B,) sequence score (normalised reward model or no-EOS penalty)
    rewards: torch.Tensor | None = None  # (B, R) per-token reward: -beta * k1, plus score at the last token
    advantages: torch.Tensor | None = None  # (B, R) GAE advantages (whitened)
    returns: torch.Tensor | None = None  # (B, R) value targets: GAE advantages (before whitening) + values

    def __post_init__(self) -> None:
        self._check_batch_dim()
        shape = self.response_ids.shape
        per_token = ("response_mask", "logprobs", "ref_logprobs", "values", "rewards", "advantages")
        for name in (*per_token, "returns"):
            t = getattr(self, name)
            if t is not None and t.shape != shape:
                raise ValueError(f"RolloutBatch: {name} has shape {tuple(t.shape)}, "
                                 f"response_ids {tuple(shape)}")


@dataclass
class PreferenceBatch(_TensorBatch):
    """Pairs of responses to the same prompts, for reward modelling. T: padded length of prompt + response."""

    chosen_ids: torch.Tensor  # (B, T) prompt + preferred response
    chosen_mask: torch.Tensor  # (B, T) attention mask of chosen_ids
    rejected_ids: torch.Tensor  # (B, T) prompt + other response
    rejected_mask: torch.Tensor  # (B, T) attention mask of rejected_ids
    margin: torch.Tensor | None = None  # (B,) optional required reward gap (Llama 2 margin loss)

    def __post_init__(self) -> None:
        self._check_batch_dim()


@dataclass
class SFTBatch(_TensorBatch):
    """Supervised fine-tuning batch, right padded. T = padded length of prompt + completion."""

    input_ids: torch.Tensor  # (B, T) prompt + completion + EOS, right padded
    attention_mask: torch.Tensor  # (B, T) 1 at real tokens
    labels: torch.Tensor  # (B, T) next-token targets = input_ids, -100 at prompt and pad positions (ignored)

    def __post_init__(self) -> None:
        self._check_batch_dim()
