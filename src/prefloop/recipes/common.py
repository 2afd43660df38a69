"""Pieces every recipe shares: the common config fields, optimizer and schedule, batch plans, errors."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from prefloop.errors import ConfigError
from prefloop.models.precision import Precision, SaveDtype
from prefloop.rollout import SamplingConfig
from prefloop.runtime.seeding import EPOCH_SEED_STRIDE

from .options import ConfigFileOption, check_out


@dataclass(kw_only=True)
class CommonConfig(ConfigFileOption):
    out: Path | None = None
    """Output directory: final model in OUT/model, metrics.jsonl, prefloop.json and OUT/checkpoint. Default:
    runs/<command>, or runs/<command>-2, -3, ... when that holds another run (with --resume: the newest)."""
    seed: int = 0
    """Random seed, 0 <= seed < 2**63 (process r of a distributed run uses seed + r * 1,000,003)."""
    max_steps: int | None = None
    """Number of optimizer steps (>= 1; PPO, GRPO, RLOO: updates). Default: derived from --epochs."""
    batch_size: int = 16
    """Global batch size (>= 1, summed over processes): examples per optimizer step."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward on each process (>= 1; gradient accumulation over the rest of the
    batch); default: the process's whole share of the batch."""
    max_length: int = 256
    """Maximum tokens of prompt + response (>= 2); longer examples are truncated (the prompt from the left)."""
    lr: float = 1e-4
    """Peak learning rate (> 0), reached after the warm-up."""
    warmup_ratio: float = 0.0
    """Fraction of the steps with a linear warm-up, in [0, 1)."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate schedule after warm-up; linear and cosine anneal to 0."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (>= 0)."""
    adam_eps: float = 1e-8
    """Adam's epsilon (> 0), added to the root of the second moment."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global L2 norm to this (>= 0; 0: no clipping)."""
    precision: Precision = "auto"
    """The computation: auto (bf16 autocast on a GPU that supports it, fp32 otherwise), fp32, bf16, or fp16 (GPU
    only, with loss scaling); trained weights stay fp32 in every mode."""
    save_every: int = 0
    """Write a resumable checkpoint to OUT/checkpoint every N steps (>= 0; 0: only at the end)."""
    log_every: int = 1
    """Log metrics to OUT/metrics.jsonl (and --report-to) every N steps (>= 1)."""
    resume: bool = False
    """Continue from OUT/checkpoint if it exists; refused if options or data that change what the run
    computes differ from the checkpoint's (--max-steps may grow; logging and --save-every may change)."""
    # Precision of the saved model (weights train as fp32 masters; --precision sets the computation's).
    dtype: SaveDtype = "auto"
    """dtype of the saved model: auto = the dtype of the checkpoint the run started from (fp32 for a new
    model); fp32, bf16 or fp16. Recorded in prefloop.json under "precision"."""
    overwrite: bool = False
    """Allow writing into an --out that holds another run's model (it is replaced when this run ends)."""
    skip_invalid: bool = False
    """Skip data records that cannot be trained on (reporting how many and the first lines) instead of
    stopping at the first."""
    report_to: str = "none"
    """Where metrics go besides OUT/metrics.jsonl: none, tensorboard (event files in OUT/tensorboard; needs
    prefloop[tensorboard]), wandb (needs prefloop[wandb]; WANDB_MODE=offline works without a network), or a
    comma-separated list such as tensorboard,wandb."""


def output_dir(cfg, recipe: str) -> Path:
    """`cfg.out`, set to the non-clobbering default (runs/<recipe>[-N]) when it was left out, and checked as
    the CLI checks it, so that `run_sft(cfg)` and the others keep the same contract: a writable directory,
    not another run's unless `overwrite` or `resume`."""
    check_out(cfg, recipe)
    return Path(cfg.out)


def make_optimizer(params, cfg: CommonConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; `params` may be parameter groups (dicts with their own `lr`)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                             fused=_can_fuse([p for g in groups for p in g["params"]]) or None)


def _can_fuse(params: list) -> bool:
    """Fused AdamW (one kernel over all tensors) where torch has it: plain floating tensors on the CPU or a CUDA
    GPU. It is the same update; the per-tensor loop that is torch's CPU default took about 5x longer (a tenth of
    a tiny GPT-2's SFT step)."""
    return bool(params) and all(type(p) is torch.nn.Parameter and p.dtype.is_floating_point
                                and p.device.type in ("cpu", "cuda") for p in params)


def make_scheduler(opt, cfg: CommonConfig, total_steps: int):
    warm = int(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - warm) / max(1, total_steps - warm)
        return max(0.0, 1 - frac) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True):
    """The global batches of one epoch: the same on every process, a function of (seed, epoch) only,
    so resuming at step s needs nothing but s."""
    from prefloop.data import length_grouped_order

    g = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
    if group_by_length:
        batches = length_grouped_order(lengths, batch_size, g)
    else:
        perm = torch.randperm(len(lengths), generator=g).tolist()
        batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    return [b for b in batches if len(b) == batch_size] or batches[:1]


class BatchPlan:
    """Maps a global step to the indices of its batch (cycling through epochs)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True):
        if not lengths:
            raise ConfigError("no training examples")
        self.lengths, self.seed, self.group = lengths, seed, group_by_length
        self.batch_size = min(batch_size, len(lengths))
        self.steps_per_epoch = len(epoch_batches(lengths, self.batch_size, seed, 0, group_by_length))
        self._cache: dict[int, list[list[int]]] = {}

    def batch(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch not in self._cache:
            self._cache = {epoch: epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group)}
        return self._cache[epoch][i]


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch."""
    return indices[rank::world]


def micro_batches(indices: list[int], micro: int | None) -> list[list[int]]:
    if not micro or micro >= len(indices):
        return [indices]
    return [indices[i:i + micro] for i in range(0, len(indices), micro)]


def total_steps(cfg: CommonConfig, steps_per_epoch: int, epochs: float) -> int:
    return cfg.max_steps if cfg.max_steps else max(1, int(math.ceil(epochs * steps_per_epoch)))


class Timer:
    """Accumulates wall time per named phase (for the PPO time split and benchmarks)."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def phase(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.t

        return _Ctx()


# A Python scoring function: fn(prompts, responses) -> one score per response (e.g. a world's gold judge).
GoldFn = Callable[[list[str], list[str]], list[float]]


def sampling_config(cfg, tok) -> SamplingConfig:
    """The sampler settings of an RL config (temperature, top-p/k, EOS or fixed length with a truncation token)."""
    trunc = None
    if cfg.truncate_token is not None:
        ids = tok.encode(cfg.truncate_token, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"--truncate-token {cfg.truncate_token!r} is not a single token ({len(ids)} tokens)")
        trunc = ids[0]
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          stop_at_eos=cfg.stop_at_eos, truncate_token_id=trunc)


def chunks(n: int, size: int):
    """Slices of size `size` covering range(n)."""
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def decode_responses(tok, ids, mask) -> list[str]:
    """Response texts of (B, R) ids, keeping only the positions the mask marks."""
    return [tok.decode(row[m.bool()].tolist(), skip_special_tokens=True) for row, m in zip(ids, mask)]
