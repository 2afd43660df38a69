"""Per-item work split over processes comes back in item order (the two-process runs are in
tests/smoke/test_distributed.py; here the gather is simulated to check the bookkeeping for any world size)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from prefloop.runtime.distributed import gather_shares, my_share, rank_and_world


@pytest.mark.parametrize("n,world", [(7, 3), (8, 2), (2, 4), (0, 2)])
def test_shares_cover_the_items_once_and_gather_in_order(monkeypatch, n, world):
    items = [f"prompt {i}" for i in range(n)]
    shares = [my_share(items, r, world) for r in range(world)]
    assert sorted(x for s in shares for x in s) == sorted(items)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1

    def all_gather_object(parts, obj):  # what every process receives: each rank's share, by rank
        parts[:] = shares

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    for r in range(world):
        assert gather_shares(shares[r], world) == items


def test_a_plain_run_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    assert gather_shares(["a", "b"], 1) == ["a", "b"]
