"""Seeding: every process gets its own stream (docs/ppo.md item 7), recorded so a run can be reproduced."""

from __future__ import annotations

import random

import numpy as np
import torch

# Each rank offsets the base seed by a large prime, so ranks never share a sampling stream.
RANK_SEED_STRIDE = 1_000_003

# Seeds of the other streams a run draws, derived from --seed alone so that a resume needs nothing but the
# step. A stream indexed by epoch, pass or round gets seed * STRIDE + index: the stride is a prime larger than
# any index, so nearby seeds do not share streams. Streams drawn side by side get different strides or
# offsets (rejection sampling draws a round's prompts and its samples; an evaluation samples the held-out
# and the red-team prompts after training sampled with --seed itself). The values are arbitrary, but each
# is part of every earlier run's numbers, so they stay.
EPOCH_SEED_STRIDE = 1009
"""Data order of an epoch (supervised recipes, pretraining); the prompts a rejection-sampling round draws."""
PROMPT_ORDER_STRIDE = 7919
"""Prompt order of a pass over the prompts (ppo, grpo, rloo); the samples of a rejection-sampling round;
the loop's anchor samples of the initial policy (seed + stride * round)."""
EVAL_SEED_OFFSET = 17
"""Samples an evaluation draws from a policy: not those training drew with the same seed."""
SECOND_EVAL_SEED_OFFSET = 29
"""A second evaluation stream beside EVAL_SEED_OFFSET's (red-team prompts; best-of-n draws)."""


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
