"""Reward functions for RL and best-of-n: one reward model, or an ensemble of several.

An ensemble is named by a directory holding `ensemble.json` (`{"members": ["members/0/model", ...]}`, paths
relative to that directory, as `prefloop reward --ensemble-size N` writes it) or by reward-model directories
joined with commas. Its members' scores combine in one of three ways (Coste et al. 2023, "Reward Model
Ensembles Help Mitigate Overoptimization"):

- `mean`: the average score;
- `min`: the worst case over members (their WCO);
- `mean-std`: mean - lambda * std over members, a penalty on the members' disagreement (their UWO
  penalises the variance; the standard deviation keeps the penalty in reward units).

Members should share a score scale: they are trained on the same comparisons from the same initial model,
and PPO normalises the combined score on the initial policy's samples anyway (docs/ppo.md item 10).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from prefloop.errors import ModelLoadError

from .heads import sequence_scores
from .loading import load_reward_model

ENSEMBLE_FILE = "ensemble.json"
EnsembleMode = Literal["mean", "min", "mean-std"]
MODES: tuple[str, ...] = ("mean", "min", "mean-std")


def reward_members(spec: str) -> list[str]:
    """The reward-model directories named by `spec` (one directory, an ensemble directory, or a comma list)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise ModelLoadError("reward model: empty name")
    if len(parts) > 1:
        return parts
    manifest = Path(parts[0]) / ENSEMBLE_FILE
    if not manifest.is_file():
        return parts
    try:
        members = json.loads(manifest.read_text()).get("members")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ModelLoadError(f"{manifest}: not a JSON object with a 'members' list ({e.__class__.__name__})") from None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise ModelLoadError(f"{manifest}: 'members' must be a non-empty list of directory names")
    return [str(manifest.parent / m) for m in members]


def combine_scores(scores: torch.Tensor, mode: EnsembleMode = "mean", lam: float = 1.0) -> torch.Tensor:
    """(M, B) member scores -> (B,) ensemble scores. The std is the population std over the M members."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"expected (members, batch) scores, got shape {tuple(scores.shape)}")
    if mode == "mean":
        return scores.mean(0)
    if mode == "min":
        return scores.min(0).values
    if mode == "mean-std":
        return scores.mean(0) - lam * scores.std(0, unbiased=False)
    raise ValueError(f"unknown ensemble mode {mode!r} (expected one of {', '.join(MODES)})")


class RewardEnsemble(nn.Module):
    """(B, T) ids -> (B,) rewards read at the last real token, combined over one or more reward models."""

    def __init__(self, models: list[nn.Module], mode: EnsembleMode = "mean", lam: float = 1.0):
        super().__init__()
        if not models:
            raise ValueError("a reward ensemble needs at least one model")
        if mode not in MODES:
            raise ValueError(f"unknown ensemble mode {mode!r} (expected one of {', '.join(MODES)})")
        self.members = nn.ModuleList(models)
        self.mode, self.lam = mode, lam

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(M, B) scores of every member."""
        return torch.stack([sequence_scores(m, input_ids, attention_mask) for m in self.members])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return sequence_scores(self.members[0], input_ids, attention_mask)
        return combine_scores(self.member_scores(input_ids, attention_mask), self.mode, self.lam)


def load_reward_scorer(spec: str, tokenizer=None, mode: EnsembleMode = "mean", lam: float = 1.0,
                       dtype: torch.dtype | None = None) -> RewardEnsemble:
    """Load the reward model(s) named by `spec`, frozen and in eval mode, as one scorer."""
    models = [load_reward_model(path, tokenizer, dtype=dtype) for path in reward_members(spec)]
    return RewardEnsemble(models, mode, lam).eval().requires_grad_(False)
