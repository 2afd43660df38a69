"""Reward model training: Bradley-Terry on preference pairs (Christiano et al. 2017; Ouyang et al. 2022).

Chosen and rejected responses go through one forward as a batch of 2B rows; the reward is read at
the last real token. One epoch with an annealed learning rate is the default (PPO.md item 11).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from prefloop.data import encode_pair, file_sha256, read_comparisons
from prefloop.models import RewardScorer, load_reward_model, load_tokenizer
from prefloop.rl import bradley_terry_loss

from .common import BatchPlan, CommonConfig, make_optimizer, make_scheduler, micro_batches, require, shard, total_steps
from .context import RunContext


@dataclass(kw_only=True)
class RewardConfig(CommonConfig):
    model: str | None = None
    """Initial model: a causal LM (e.g. the SFT checkpoint) gets a new reward head; a reward model continues."""
    data: Path | None = None
    """Comparisons JSONL: {"prompt", "chosen", "rejected"} (standard, conversational or implicit prompt)."""
    eval_data: Path | None = None
    """Held-out comparisons; default: --eval-fraction of the prompts of --data are held out."""
    eval_fraction: float = 0.1
    """Fraction of prompts held out for evaluation when --eval-data is not given (0 disables)."""
    use_margin: bool = False
    """Subtract each pair's `margin` field inside the loss (Llama 2's margin loss)."""
    epochs: float = 1.0
    lr: float = 5e-5
    warmup_ratio: float = 0.05


def is_reward_model(path: str) -> bool:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        return False
    archs = json.loads(cfg_file.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def split_by_prompt(comparisons: list, fraction: float, seed: int):
    """Hold out whole prompts, so no held-out prompt was seen in training."""
    if fraction <= 0:
        return comparisons, []
    prompts = sorted({json.dumps(c.prompt, sort_keys=True) for c in comparisons})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:max(1, int(round(fraction * len(prompts))))])
    train = [c for c in comparisons if json.dumps(c.prompt, sort_keys=True) not in held]
    return train, [c for c in comparisons if json.dumps(c.prompt, sort_keys=True) in held]


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def score_pairs(scorer, pairs: list, pad_id: int, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of encoded (chosen_ids, rejected_ids) pairs: two (N,) tensors."""
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask = pad_rows([p[0] for p in chunk] + [p[1] for p in chunk], pad_id)
        s = scorer(ids.to(device), mask.to(device)).float().cpu()
        chosen.append(s[:len(chunk)])
        rejected.append(s[len(chunk):])
    return torch.cat(chosen), torch.cat(rejected)


def run_reward(cfg: RewardConfig) -> dict:
    require(cfg, "model", "data")
    ctx = RunContext("reward", cfg)
    tok = load_tokenizer(cfg.model)
    comparisons = read_comparisons(cfg.data)
    if cfg.eval_data:
        train, held = comparisons, read_comparisons(cfg.eval_data)
    else:
        train, held = split_by_prompt(comparisons, cfg.eval_fraction, cfg.seed)
    enc = [encode_pair(tok, c, cfg.max_length) for c in train]
    enc_held = [encode_pair(tok, c, cfg.max_length) for c in held]
    margins = [float(c.margin or 0.0) if cfg.use_margin else 0.0 for c in train]

    plan = BatchPlan([max(len(a), len(b)) for a, b in enc], cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, plan.steps_per_epoch, cfg.epochs)
    init = ctx.init_path("model", cfg.model)
    rm = load_reward_model(init, tok, new_head=not ctx.resuming and not is_reward_model(cfg.model))
    model = RewardScorer(rm)
    model.train()
    opt = make_optimizer(model.parameters(), cfg)
    sched = make_scheduler(opt, cfg, steps)
    state = ctx.ckpt.load_state() if ctx.resuming else None
    if state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    model, opt = ctx.acc.prepare(model, opt)

    step = ctx.start(steps, state)
    while step < steps:
        batch_idx = plan.batch(step)
        frac = 1.0 / len(batch_idx)
        stats_sum: dict[str, float] = {}
        mbs = micro_batches(shard(batch_idx, ctx.rank, ctx.world), cfg.micro_batch_size)
        for mb in mbs:
            ids, mask = pad_rows([enc[i][0] for i in mb] + [enc[i][1] for i in mb], tok.pad_token_id)
            with ctx.acc.autocast():
                scores = model(ids.to(ctx.device), mask.to(ctx.device))
            margin = torch.tensor([margins[i] for i in mb], device=ctx.device) if cfg.use_margin else None
            loss, stats = bradley_terry_loss(scores[:len(mb)], scores[len(mb):], margin)
            # Each micro-batch's mean loss weighted by its share of the global batch (DDP averages ranks).
            ctx.acc.backward(loss * len(mb) * frac * ctx.world)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v * len(mb)
        if cfg.max_grad_norm:
            ctx.acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        metrics = {k: ctx.all_sum(v) / len(batch_idx) for k, v in stats_sum.items()}
        metrics["lr"] = sched.get_last_lr()[0]
        ctx.log(step, metrics, show=("loss/reward", "reward/accuracy"))
        ctx.maybe_checkpoint(step, steps, {"model": ctx.acc.unwrap_model(model).rm}, tok,
                             lambda: {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})

    final: dict = {"train_comparisons": len(train), "eval_comparisons": len(held), "steps": steps}
    if enc_held:
        model.eval()
        c, r = score_pairs(ctx.acc.unwrap_model(model), enc_held, tok.pad_token_id, ctx.device)
        final.update({"eval/accuracy": float((c > r).float().mean()), "eval/margin": float((c - r).mean())})
        ctx.logger.log(step, final)
    return ctx.finish(ctx.acc.unwrap_model(model).rm, tok, final, {"data": file_sha256(cfg.data)})
