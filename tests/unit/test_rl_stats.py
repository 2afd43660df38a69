"""prefloop.rl.stats: masked sums, means, variances, whitening (also across processes), explained variance."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prefloop.rl import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

NAN, INF = math.nan, math.inf


def naive_whiten(x, mask, shift_mean=True, eps=1e-8):
    kept = [float(v) for v, m in zip(x.flatten(), mask.flatten()) if m]
    mean = sum(kept) / len(kept)
    var = sum((v - mean) ** 2 for v in kept) / len(kept)
    out = torch.zeros(x.shape, dtype=torch.float64).flatten()
    for i, (v, m) in enumerate(zip(x.flatten(), mask.flatten())):
        if m:
            out[i] = (float(v) - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)
    return out.reshape(x.shape)


def test_hand_example_ignores_masked_entries_even_nan():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, NAN, INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Kept: 1, 2, 3 -> sum 6, mean 2, biased var ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3, unbiased 2/2 = 1.
    assert masked_sum(x, mask).item() == 6.0
    assert masked_mean(x, mask).item() == 2.0
    assert masked_var(x, mask).item() == pytest.approx(2 / 3)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(1.0)
    # Per row: sums [3, 3], means [1.5, 3].
    torch.testing.assert_close(masked_sum(x, mask, dim=1), torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))


def test_bool_and_float_masks_agree_and_empty_mask_gives_zero():
    x = torch.arange(6.0).reshape(2, 3)
    m = torch.tensor([[True, False, True], [False, False, False]])
    assert masked_mean(x, m).item() == masked_mean(x, m.float()).item() == 1.0  # (0 + 2) / 2
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    torch.testing.assert_close(masked_mean(x, m, dim=1), torch.tensor([1.0, 0.0]))


def test_var_matches_torch_on_kept_entries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=g, dtype=torch.float64) * 3 + 1
    mask = torch.rand(5, 9, generator=g) > 0.4
    kept = x[mask]
    torch.testing.assert_close(masked_mean(x, mask), kept.mean())
    torch.testing.assert_close(masked_var(x, mask), kept.var(unbiased=False))
    torch.testing.assert_close(masked_var(x, mask, unbiased=True), kept.var(unbiased=True))


def test_whiten_mean_zero_std_one_and_zero_at_pads():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=g) * 5 + 3
    mask = torch.rand(6, 8, generator=g) > 0.3
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-5
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(w.double(), naive_whiten(x, mask), atol=1e-5, rtol=0)


def test_whiten_without_shifting_keeps_the_mean():
    # Kept [1, 3]: mean 2, biased std 1 -> whitened [-1, 1], mean added back: [1, 3] (unchanged here).
    x = torch.tensor([[1.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 3.0, 0.0]]))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, generator=g) * 2 + 5
    mask = torch.rand(4, 7, generator=g) > 0.3
    w = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(masked_mean(w, mask), masked_mean(x, mask), atol=1e-5, rtol=0)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(w.double(), naive_whiten(x, mask, shift_mean=False), atol=1e-5, rtol=0)


def test_whiten_keeps_dtype_and_works_without_process_group():
    x = torch.randn(3, 4).bfloat16()
    mask = torch.ones(3, 4)
    assert masked_whiten(x, mask).dtype == torch.bfloat16
    y = torch.randn(3, 4)
    torch.testing.assert_close(masked_whiten(y, mask, distributed=True), masked_whiten(y, mask))


def test_explained_variance():
    # returns [1, 2, 3], values [1, 2, 4]: residual [0, 0, -1], Var = 1/3 - 1/9 = 2/9; Var[returns] = 2/3;
    # EV = 1 - (2/9) / (2/3) = 2/3. The masked fourth entry is ignored.
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    values = torch.tensor([[1.0, 2.0, 4.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(values, returns, mask) == pytest.approx(2 / 3)
    assert explained_variance(returns, returns, mask) == 1.0
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask))


# Distributed whitening: 2 gloo processes, each whitening its own shard with distributed=True, must give
# what whitening the concatenation in one process gives.

def _shard(rank):
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(3 + rank, 5, generator=g) * (1 + rank) + 4 * rank  # shards differ in mean, scale, size
    mask = torch.rand(3 + rank, 5, generator=g) > 0.3
    return x, mask


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, mask = _shard(rank)
        torch.save({"shift": masked_whiten(x, mask, distributed=True),
                    "noshift": masked_whiten(x, mask, shift_mean=False, distributed=True)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_whiten_equals_whitening_the_concatenation(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    shards = [_shard(r) for r in range(2)]
    x = torch.cat([s[0] for s in shards])
    mask = torch.cat([s[1] for s in shards])
    for key, shift in (("shift", True), ("noshift", False)):
        got = torch.cat([torch.load(tmp_path / f"rank{r}.pt")[key] for r in range(2)])
        torch.testing.assert_close(got, masked_whiten(x, mask, shift_mean=shift), atol=1e-5, rtol=0)
        # ...and differs from whitening each shard on its own (the shards have different statistics).
        alone = torch.cat([masked_whiten(*s, shift_mean=shift) for s in shards])
        assert not torch.allclose(got, alone, atol=1e-3)
