"""Reward-model scores of encoded rows and of texts, in batches: what reward training's held-out metrics,
`prefloop eval` and the demo's evaluation all read a reward model with.

`scorer` is any module `(B, T) ids, (B, T) mask -> (B,) scores`: a `RewardScorer`, an ensemble, or a training
module with thresholds (whose first output is taken by the caller's wrapper).
"""

from __future__ import annotations

import torch

from prefloop.data.records import Comparison
from prefloop.data.tokenize import encode_pair, right_pad

from .wrappers import RewardScorer


@torch.no_grad()
def score_rows(scorer, rows: list[list[int]], pad_id: int, device, batch_size: int = 64) -> torch.Tensor:
    """Rewards (N,) of encoded prompt+response rows, on the CPU as float32."""
    out = [scorer(*(x.to(device) for x in right_pad(rows[i:i + batch_size], pad_id))).float().cpu()
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def score_pairs(scorer, pairs: list, pad_id: int, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of encoded (chosen_ids, rejected_ids) pairs: two (N,) tensors. Both rows of a pair go through one
    forward, as in training."""
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask = right_pad([p[0] for p in chunk] + [p[1] for p in chunk], pad_id)
        s = scorer(ids.to(device), mask.to(device)).float().cpu()
        chosen.append(s[:len(chunk)])
        rejected.append(s[len(chunk):])
    return torch.cat(chosen), torch.cat(rejected)


def score_texts(rm, tok, prompts: list, responses: list[str], max_length: int = 512, batch_size: int = 32,
                device="cpu") -> list[float]:
    """Scores of (prompt, response) texts under the reward model `rm`, tokenised with its own tokenizer `tok`
    (so the policy that wrote the responses may use another one)."""
    rows = [encode_pair(tok, Comparison(p, r, r), max_length)[0] for p, r in zip(prompts, responses)]
    return score_rows(RewardScorer(rm), rows, tok.pad_token_id, device, batch_size).tolist()
