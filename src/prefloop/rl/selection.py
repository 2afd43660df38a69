"""Which pairs to show people: pair drawing from K samples, and ranking pairs by what a label would teach.

Labels are the expensive part of RLHF, so a loop should (a) never send a pair that cannot be compared
(identical replies), (b) draw the two replies so that they differ, and (c) spend its budget on the pairs the
reward model is least sure about. The reward model predicts P(A > B) = sigmoid(r_A - r_B) (Bradley-Terry);
with an ensemble of M reward models there are M such predictions per pair. Usefulness scores (higher = more
useful), for member margins m (M, N):

- uncertainty:  1 - |2 p - 1| with p = sigmoid(mean over members of m): the mean prediction is near 0.5
- disagreement: the standard deviation over members of sigmoid(m) (zero for a single model)
- bald:         H(mean p) - mean H(p_m), the mutual information between the label and the model (Houlsby et
                al. 2011, "Bayesian active learning by disagreement"); zero for a single model

Pair drawing (`draw_pair`) works on one prompt's candidate replies and their reward-model scores:
- same:      the first two distinct replies (two samples of one policy, as the plain loop draws them)
- spread:    the replies the reward model scores highest and lowest (a pair far apart in quality)
- uncertain: the pair whose score difference is smallest (the reward model's least certain pair)
`draw_anchor_pair` pairs a reply of the current policy with a different reply of an earlier policy.
Replies are compared after stripping whitespace; an empty reply is never paired, nor one holding a NUL
character (a byte-level model can sample one; the data readers and the feedback app refuse such text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SELECT_SCORES = ("random", "uncertainty", "disagreement", "bald")
PAIR_STRATEGIES = ("same", "spread", "uncertain")


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def usefulness(member_margins: torch.Tensor, how: str) -> torch.Tensor:
    """(M, N) reward margins r_A - r_B of M ensemble members on N pairs -> (N,) scores, higher = label first.

    `random` returns zeros (every pair equally useful; `select_top` breaks the ties at random)."""
    if member_margins.dim() != 2 or member_margins.shape[0] < 1:
        raise ValueError(f"expected (members, pairs) margins, got shape {tuple(member_margins.shape)}")
    m = member_margins.float()
    if how == "random":
        return torch.zeros(m.shape[1])
    if how == "uncertainty":
        return 1.0 - (2.0 * torch.sigmoid(m.mean(0)) - 1.0).abs()
    p = torch.sigmoid(m)
    if how == "disagreement":
        return p.std(0, unbiased=False)
    if how == "bald":
        return (_binary_entropy(p.mean(0)) - _binary_entropy(p).mean(0)).clamp_min(0.0)
    raise ValueError(f"unknown selection {how!r} (expected one of {', '.join(SELECT_SCORES)})")


def select_top(scores: torch.Tensor, budget: int, generator: torch.Generator | None = None) -> list[int]:
    """Indices of the `budget` highest scores (all of them when fewer), best first; equal scores in a random
    order drawn from `generator`, so `random` selection (all scores equal) is a seeded random subset."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    n = scores.numel()
    perm = torch.randperm(n, generator=generator)
    # A stable sort of the shuffled scores keeps the random order among ties.
    order = torch.sort(scores.flatten()[perm].float(), descending=True, stable=True).indices
    return perm[order][:budget].tolist()


def distinct_replies(responses: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of each distinct, non-empty reply (compared after stripping) that holds
    no NUL character."""
    seen, out = set(), []
    for i, r in enumerate(responses):
        key = r.strip()
        if key and key not in seen and "\x00" not in key:
            seen.add(key)
            out.append(i)
    return out


def draw_pair(responses: Sequence[str], scores: Sequence[float] | None, how: str) -> tuple[int, int] | None:
    """Two indices into `responses` whose replies differ, chosen by `how` (module docstring); None when fewer
    than two distinct non-empty replies exist. `scores` (reward-model scores of the replies) are needed by
    spread and uncertain; without them both fall back to `same`."""
    if how not in PAIR_STRATEGIES:
        raise ValueError(f"unknown pair strategy {how!r} (expected one of {', '.join(PAIR_STRATEGIES)})")
    idx = distinct_replies(responses)
    if len(idx) < 2:
        return None
    if how == "same" or scores is None:
        return idx[0], idx[1]
    if len(scores) != len(responses):
        raise ValueError(f"{len(scores)} scores for {len(responses)} replies")
    if how == "spread":
        hi = max(idx, key=lambda i: scores[i])
        lo = min(idx, key=lambda i: scores[i])
        return (hi, lo) if hi != lo else (idx[0], idx[1])
    best, best_gap = (idx[0], idx[1]), math.inf
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            gap = abs(scores[idx[a]] - scores[idx[b]])
            if gap < best_gap:
                best, best_gap = (idx[a], idx[b]), gap
    return best


def draw_anchor_pair(current: Sequence[str], earlier: Sequence[str]) -> tuple[int, int] | None:
    """(i, j): reply i of the current policy and reply j of an earlier policy that differs from it, or None.
    Pairing against an earlier policy keeps pairs comparable when the current policy has lost diversity."""
    for i in distinct_replies(current):
        for j in distinct_replies(earlier):
            if earlier[j].strip() != current[i].strip():
                return i, j
    return None


__all__ = ["PAIR_STRATEGIES", "SELECT_SCORES", "distinct_replies", "draw_anchor_pair", "draw_pair", "select_top",
           "usefulness"]
