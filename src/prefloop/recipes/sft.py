"""Supervised fine-tuning on demonstrations: next-token loss on the completion only (prompt masked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prefloop.data import (
    collate_sft,
    encode_example,
    file_sha256,
    read_demonstrations,
    render_completion,
    render_prompt,
)
from prefloop.errors import require
from prefloop.models import CausalLMLoss, load_tokenizer

from .common import BatchPlan, CommonConfig, micro_batches, shard, total_steps
from .context import RunContext
from .memory import LoraOptions, final_model, load_trained_lm
from .options import EpochsOption, required


@dataclass(kw_only=True)
class SFTConfig(EpochsOption, CommonConfig, LoraOptions):
    model: str | None = required()
    """Causal LM to fine-tune: a local Hugging Face directory or a hub id."""
    data: Path | None = required()
    """Demonstrations JSONL: {"prompt", "completion"} or {"messages": [...]}."""
    lr: float = 1e-4
    warmup_ratio: float = 0.05


def encode_demonstrations(tokenizer, path: Path, max_length: int):
    demos = read_demonstrations(path)
    return [encode_example(tokenizer, render_prompt(tokenizer, d.prompt),
                           render_completion(tokenizer, d.prompt, d.completion), max_length) for d in demos]


def run_sft(cfg: SFTConfig) -> dict:
    require(cfg, "model", "data")
    ctx = RunContext("sft", cfg)
    tok = load_tokenizer(cfg.model)
    examples = encode_demonstrations(tok, cfg.data, cfg.max_length)
    n_targets = [sum(1 for x in e.labels[1:] if x != -100) for e in examples]

    plan = BatchPlan([len(e.input_ids) for e in examples], cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, plan.steps_per_epoch, cfg.epochs)
    model = CausalLMLoss(load_trained_lm(ctx, "model", cfg.model, tok, cfg))
    model.train()
    state = ctx.resume_state()
    opt, sched = ctx.optimizer(model.parameters(), steps, state)
    model, opt = ctx.prepare(model, opt)

    step = ctx.start(steps, state)
    while step < steps:
        batch_idx = plan.batch(step)
        # Normalise by the target tokens of the whole global batch, so micro-batches and processes
        # add up to the exact mean token loss (DDP averages gradients over processes, hence * world).
        denom = sum(n_targets[i] for i in batch_idx) / ctx.world
        local_sum = torch.zeros((), device=ctx.device)  # summed on the device, read once per step
        for mb in ctx.accumulate(micro_batches(shard(batch_idx, ctx.rank, ctx.world), cfg.micro_batch_size), model):
            b = collate_sft([examples[i] for i in mb], tok.pad_token_id)
            with ctx.acc.autocast():
                loss_sum = model(b.input_ids.to(ctx.device), b.attention_mask.to(ctx.device), b.labels.to(ctx.device))
                ctx.acc.backward(loss_sum / denom)
            local_sum = local_sum + loss_sum.detach().float()
        grad_norm = ctx.step(opt, sched)
        step += 1

        loss = ctx.all_sum(float(local_sum)) / (denom * ctx.world)
        ctx.log(step, {"loss/sft": loss, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm}, show=("loss/sft",))
        ctx.maybe_checkpoint(step, steps, {"model": _lm(ctx, model)}, tok, opt, sched)

    final = {"loss/sft": ctx.logger.history[-1]["loss/sft"] if ctx.logger.history else None, "steps": steps,
             "examples": len(examples)}
    lm, counts = final_model(_lm(ctx, model), cfg)
    return ctx.finish(lm, tok, {**final, **counts}, {"data": file_sha256(cfg.data)})


def _lm(ctx, wrapped):
    return ctx.acc.unwrap_model(wrapped).lm
