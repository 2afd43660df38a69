"""Splitting per-item work (sampling prompts) over the processes of a distributed launch and putting the
results back in input order, so that every process ends up with the same full list and no item is drawn twice."""

from __future__ import annotations

import os


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes). Under `torchrun` or `accelerate launch` with several
    processes the process group is set up here if no Accelerator did it yet; a plain run is (0, 1)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState

        # Reads RANK, WORLD_SIZE, MASTER_ADDR/PORT and initialises the group. Without a GPU, cpu=True is what
        # makes it a gloo group (and a later Accelerator shares this state, so it must be right the first time).
        PartialState(cpu=not torch.cuda.is_available())
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(items: list, rank: int, world: int) -> list:
    """Items rank, rank + world, rank + 2 * world, ...: this process's share, balanced to within one item."""
    return items[rank::world]


def gather_shares(share: list, world: int) -> list:
    """Every process's `my_share` results, back in the order of the items they came from (on every process)."""
    if world == 1:
        return list(share)
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, share)
    n = sum(len(p) for p in parts)
    return [parts[i % world][i // world] for i in range(n)]
