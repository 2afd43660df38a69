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

    def crop(self, query_start: int, response_len: int) -> RolloutBatch:
        """A copy without the columns no row uses: prompt columns before `query_start` (all left padding) and
        response columns from `response_len` on (all right padding). Position ids count real tokens and a
        causal mask keeps right padding unseen, so every real token computes what it computed before."""
        q, r = slice(query_start, None), slice(0, response_len)
        cols = {"query_ids": q, "query_mask": q, "response_ids": r, "response_mask": r, "logprobs": r,
                "ref_logprobs": r, "values": r, "rewards": r, "advantages": r, "returns": r}
        cropped = {k: None if t is None else t[:, cols[k]] if k in cols else t for k, t in self._tensors().items()}
        return dataclasses.replace(self, **cropped)


@dataclass
class PreferenceBatch(_TensorBatch):
    """Pairs of responses to the same prompts (reward models, DPO), right padded to one length T so that
    `rows()` scores both sides in one (2B, T) forward: the B chosen rows first, then the B rejected rows.
    `prefloop.data.collate_pairs` builds it."""

    chosen_ids: torch.Tensor  # (B, T) prompt + preferred response + EOS, right padded
    chosen_mask: torch.Tensor  # (B, T) attention mask of chosen_ids
    rejected_ids: torch.Tensor  # (B, T) prompt + other response + EOS, right padded to the same T
    rejected_mask: torch.Tensor  # (B, T) attention mask of rejected_ids
    margin: torch.Tensor | None = None  # (B,) optional required reward gap (Llama 2 margin loss)
    chosen_response_mask: torch.Tensor | None = None  # (B, T) 1 at response tokens (not prompt, not pad)
    rejected_response_mask: torch.Tensor | None = None  # (B, T) the same for rejected_ids

    def __post_init__(self) -> None:
        self._check_batch_dim()

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(2B, T) ids, attention mask and response mask (None when the batch has none): chosen, then rejected."""
        response = None
        if self.chosen_response_mask is not None and self.rejected_response_mask is not None:
            response = torch.cat([self.chosen_response_mask, self.rejected_response_mask])
        return (torch.cat([self.chosen_ids, self.rejected_ids]), torch.cat([self.chosen_mask, self.rejected_mask]),
                response)


@dataclass
class PairLogprobs(_TensorBatch):
    """Sequence log-probs of both responses of B pairs under one policy: what the DPO family compares."""

    chosen: torch.Tensor  # (B,) sum over the chosen response's tokens of log pi(y_t | x, y_<t)
    rejected: torch.Tensor  # (B,) the same for the rejected response
    chosen_tokens: torch.Tensor  # (B,) number of chosen response tokens (EOS included)
    rejected_tokens: torch.Tensor  # (B,) number of rejected response tokens

    def __post_init__(self) -> None:
        self._check_batch_dim()

    @classmethod
    def from_rows(cls, sums: torch.Tensor, counts: torch.Tensor) -> PairLogprobs:
        """From (2B,) per-row sums and token counts of a `PreferenceBatch.rows()` forward (chosen rows first)."""
        B = sums.shape[0] // 2
        return cls(sums[:B], sums[B:], counts[:B], counts[B:])

    @classmethod
    def cat(cls, parts: Sequence[PairLogprobs]) -> PairLogprobs:
        """The pairs of `parts`, in order, as one batch (an empty batch for no parts)."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not parts:
            return cls(*(torch.zeros(0) for _ in names))
        return cls(*(torch.cat([getattr(p, n) for p in parts]) for n in names))

    def sequence_logps(self, per_token: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) (B,) sequence log-probs: sums (DPO, cDPO, as the DPO paper) or, with
        `per_token`, averages over the response tokens (IPO, see `prefloop.rl.preference.ipo_loss`)."""
        if not per_token:
            return self.chosen, self.rejected
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class SFTBatch(_TensorBatch):
    """Supervised fine-tuning batch, right padded (`prefloop.data.collate_sft`). T = padded prompt + completion."""

    input_ids: torch.Tensor  # (B, T) prompt + completion + EOS, right padded
    attention_mask: torch.Tensor  # (B, T) 1 at real tokens
    labels: torch.Tensor  # (B, T) next-token targets = input_ids, -100 at prompt and pad positions (ignored)

    def __post_init__(self) -> None:
        self._check_batch_dim()


# A micro-batch's fixed cost (Python around the forward and backward, kernel launches, smaller matmuls), in
# padded token positions. On 2 CPU cores a tiny GPT-2 spends about as long on 64 positions as on one more
# forward/backward. A GPU runs many more positions in the time of one launch sequence: 1024 there is an
# estimate, not a measurement.
GROUP_OVERHEAD_TOKENS = 64
GROUP_OVERHEAD_TOKENS_GPU = 1024


def length_groups(lengths: Sequence[int], max_rows: int | None = None, overhead: int = GROUP_OVERHEAD_TOKENS,
                  equal_count: bool = False) -> list[list[int]]:
    """Indices 0..n-1 of rows of `lengths` tokens, cut into micro-batches of rows of similar length.

    A (b, T) forward computes b * T positions, T its longest row, so rows sorted by length and cut into
    consecutive groups compute fewer padding positions. The cut minimises the sum over groups of
    rows * longest row + `overhead` (exactly, by dynamic programming over the sorted order), with at most
    `max_rows` rows a group (None: no limit). `equal_count`: plain chunks of `max_rows` of the sorted order
    instead, ceil(n / max_rows) of them whatever the lengths, for processes that must run as many forwards as
    each other (sharded training). Each group lists its rows by increasing length.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    cap = n if not max_rows or max_rows >= n else max_rows
    if equal_count or n == 0:
        return [order[i:i + cap] for i in range(0, n, cap)] if n else []
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cut of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - cap), j):
            cost = best[i] + (j - i) * longest + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
