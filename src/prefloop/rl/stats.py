"""Masked statistics over padded (B, T) tensors: sums, means, variances, whitening, explained variance.

Also the one convention for the statistics every loss and estimator in `prefloop.rl` returns beside its value:
`Stats`, a dict of namespaced keys to python floats (`to_stats` makes it, with one device-to-host transfer).

A mask is 1 (or True) at real tokens and 0 at padding; any dtype works. Masked-out entries never reach the
result, even when they hold inf or nan (selection with `torch.where`, not multiplication).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

Stats = dict[str, float]


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 keeps the one-pass variance E[x^2] - E[x]^2 accurate; MPS has no float64.
    return torch.float32 if x.device.type == "mps" else torch.float64


def to_stats(named: dict[str, torch.Tensor]) -> Stats:
    """Detached 0-dim (or one-element) tensors -> python floats, in one device-to-host transfer for all of them
    (not one sync per value). float64 where the device has it, so float64 inputs keep their precision."""
    if not named:
        return {}
    first = next(iter(named.values()))
    values = torch.stack([t.detach().reshape(()).to(_stat_dtype(first)) for t in named.values()]).tolist()
    return dict(zip(named, values))


def _keep(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is set, 0 elsewhere (gradient 0 there too)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is set. x, mask: same shape, e.g. (B, T); a scalar, or reduced over dim."""
    kept = _keep(x, mask)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is set. x, mask: same shape; scalar, or reduced over dim.

    An empty mask (or an empty slice along dim) gives 0, not nan, so that a loss over a micro-batch with no
    real tokens contributes nothing instead of poisoning the gradients.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of x over all entries where mask is set; scalar.

    Biased (divide by n) by default, as in lm-human-preferences' whitening (docs/ppo.md item 15); unbiased divides
    by n - 1 and, like torch.var, gives nan or inf for a single entry. Two-pass (mean first) for accuracy.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum().to(x.dtype)
        var = var * n / (n - 1)
    return var


@torch.no_grad()
def _moments(x: torch.Tensor, mask: torch.Tensor, distributed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and biased variance of x (scalars), over all processes when distributed."""
    dt = _stat_dtype(x)
    xs = _keep(x.detach().to(dt), mask)
    m = mask.bool()
    local = torch.stack([xs.sum(), (xs * xs).sum(), m.sum().to(dt)])
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(local)  # one collective for sum, sum of squares and count
    total, total_sq, count = local.unbind()
    count = count.clamp(min=1)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0)
    return mean, var


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    distributed: bool = False,
) -> torch.Tensor:
    """Whiten x over the entries where mask is set: (x - mean) / sqrt(var + eps), biased var.

    x, mask: (B, T) (any shape). Returns x's shape and dtype, 0 where mask is 0. With shift_mean=False the
    mean is added back (rewards are whitened without shifting their mean, docs/ppo.md item 15; Ziegler et al.
    2019). With distributed=True and torch.distributed initialised, the statistics are over the masked
    entries of all processes (one all_reduce of [sum, sum of squares, count]). The statistics are treated
    as constants: no gradient flows through them.
    """
    mean, var = _moments(x, mask, distributed)
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    whitened = (xf - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _keep(whitened.to(x.dtype), mask)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over the masked entries; values, returns, mask: (B, T).

    1 for perfect value predictions, 0 for predicting the mean, negative when worse than that. nan when
    Var[returns] is 0 (undefined), so that callers can tell it apart.
    """
    dt = _stat_dtype(returns)
    r, v = returns.detach().to(dt), values.detach().to(dt)
    var_r = float(masked_var(r, mask))
    if var_r == 0.0 or not math.isfinite(var_r):
        return math.nan
    return 1.0 - float(masked_var(r - v, mask)) / var_r
