"""Seeding: every process gets its own stream (docs/ppo.md item 7), recorded so a run can be reproduced."""

from __future__ import annotations

import random

import numpy as np
import torch

# Each rank offsets the base seed by a large prime, so ranks never share a sampling stream.
RANK_SEED_STRIDE = 1_000_003


def process_seed(seed: int, rank: int) -> int:
    return seed + rank * RANK_SEED_STRIDE


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch for this process; returns the seed actually used."""
    s = process_seed(seed, rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    return s


def rng_state() -> dict:
    """Everything needed to continue the random streams of this process after a resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
