"""Direct preference optimisation: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023) and conservative DPO.

The policy learns from comparisons directly, without a reward model or sampling: the loss raises the
log-ratio log pi / pi_ref of the chosen response above that of the rejected one. The reference is the
initial policy unless --reference is given; its log-probs are computed once before training (one pass,
kept per example) unless --no-precompute-reference asks for them on the fly. Chosen and rejected
responses go through one forward as a batch of 2B rows. The math lives in `prefloop.rl.preference`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from prefloop.data import collate_pairs, file_sha256, read_comparisons
from prefloop.data.encode_more import PromptedPair, encode_pair_with_prompt
from prefloop.data.splits import split_by_prompt
from prefloop.errors import ConfigError, require
from prefloop.models import hidden_logprobs, hidden_states, load_causal_lm, load_tokenizer
from prefloop.models.lora import WithoutAdapter
from prefloop.rl import PairLogprobs
from prefloop.rl.preference import cdpo_loss, dpo_sigmoid_loss, ipo_loss
from prefloop.runtime.accel import frozen_dtype

from .common import BatchPlan, CommonConfig, micro_batches, shard, total_steps
from .context import RunContext
from .memory import LoraOptions, final_model, load_trained_lm, shares_reference
from .options import EpochsOption, required


@dataclass(kw_only=True)
class DPOConfig(EpochsOption, CommonConfig, LoraOptions):
    model: str | None = required()
    """Policy to optimise (usually the SFT checkpoint); also the reference unless --reference is given."""
    data: Path | None = required()
    """Comparisons JSONL: {"prompt", "chosen", "rejected"} (standard, conversational or implicit prompt)."""
    eval_data: Path | None = None
    """Held-out comparisons; default: --eval-fraction of the prompts of --data are held out."""
    eval_fraction: float = 0.1
    """Fraction of prompts held out for evaluation when --eval-data is not given (0 disables)."""
    reference: str | None = None
    """Reference policy pi_ref (default: the initial policy, --model); it must share the policy's tokenizer."""
    loss: Literal["sigmoid", "ipo", "cdpo"] = "sigmoid"
    """sigmoid: DPO; ipo: IPO on per-token average log-probs; cdpo: DPO with label smoothing."""
    beta: float = 0.1
    """Strength of the implicit KL regularisation. IPO regresses the log-ratio gap to 1 / (2 beta) nats per
    token, so it wants a larger beta (0.5-1) than DPO (0.1)."""
    label_smoothing: float = 0.1
    """cdpo: assumed probability that a preference label is flipped, in [0, 0.5)."""
    precompute_reference: bool = True
    """Compute reference log-probs once before training (then free the reference model);
    --no-precompute-reference computes them in every step instead (less start-up, more compute and memory)."""
    lr: float = 1e-6
    warmup_ratio: float = 0.1


LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss, "cdpo": cdpo_loss}


def check_config(cfg: DPOConfig) -> None:
    require(cfg, "model", "data")
    if not (cfg.beta > 0 and math.isfinite(cfg.beta)):
        raise ConfigError(f"--beta must be a positive number, got {cfg.beta}")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ConfigError(f"--label-smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.loss not in LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")


class SequenceLogprobs(nn.Module):
    """(2B, T) right-padded prompt+response ids -> (2B,) summed log-probs of the response tokens and (2B,)
    their counts. `response_mask` (2B, T) is 1 on response tokens; the hidden state at t - 1 predicts token t.
    Only response positions are projected onto the vocabulary (prompt and padding cost no LM head)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, response_mask):
        h = hidden_states(self.lm, input_ids, attention_mask)[:, :-1]
        keep = response_mask[:, 1:].bool()
        logp = hidden_logprobs(self.lm, h[keep], input_ids[:, 1:][keep]).logprobs  # (N,) response tokens
        rows = torch.arange(keep.shape[0], device=keep.device).unsqueeze(1).expand_as(keep)[keep]
        sums = torch.zeros(keep.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
        return sums, keep.sum(-1).to(logp.dtype)


def collate(pairs: list[PromptedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows, right padded to one length: ids, attention mask, response mask (2B, T)."""
    return collate_pairs(pairs, pad_id, prompt_lens=[p.prompt_len for p in pairs]).rows()


@torch.no_grad()
def pair_logprobs(fwd: nn.Module, pairs: list[PromptedPair], pad_id: int, device, batch_size: int,
                  autocast=nullcontext) -> PairLogprobs:
    """Summed response log-probs and response token counts of `pairs` under `fwd` (a SequenceLogprobs), on
    the CPU, in the order of `pairs`. The forwards take the pairs by length (`batch_size` at a time), so each
    batch pads little. `autocast`: the training forward's precision context, so that policy and reference
    agree at step 0."""
    order = sorted(range(len(pairs)), key=lambda i: max(len(pairs[i].chosen), len(pairs[i].rejected)))
    out = []
    for i in range(0, len(pairs), batch_size):
        ids, mask, resp = collate([pairs[j] for j in order[i:i + batch_size]], pad_id)
        with autocast():
            s, n = fwd(ids.to(device), mask.to(device), resp.to(device))
        out.append(PairLogprobs.from_rows(s.float().cpu(), n.float().cpu()))
    return PairLogprobs.cat(out).select(sorted(range(len(order)), key=order.__getitem__))


def dpo_loss(cfg: DPOConfig, policy: PairLogprobs, ref: PairLogprobs):
    """The configured loss of the policy's and the reference's sequence log-probs of the same pairs."""
    pc, pr = policy.sequence_logps(per_token=cfg.loss == "ipo")
    rc, rr = ref.sequence_logps(per_token=cfg.loss == "ipo")
    if cfg.loss == "cdpo":
        return cdpo_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing)
    return LOSSES[cfg.loss](pc, pr, rc, rr, cfg.beta)


def run_dpo(cfg: DPOConfig) -> dict:
    check_config(cfg)
    ctx = RunContext("dpo", cfg)
    tok = load_tokenizer(cfg.model)
    comparisons = read_comparisons(cfg.data, allow_identical=False)
    if cfg.eval_data:
        train, held = comparisons, read_comparisons(cfg.eval_data, allow_identical=False)
    else:
        train, held = split_by_prompt(comparisons, cfg.eval_fraction, cfg.seed)
    enc = [encode_pair_with_prompt(tok, c, cfg.max_length) for c in train]
    enc_held = [encode_pair_with_prompt(tok, c, cfg.max_length) for c in held]

    plan = BatchPlan([max(len(p.chosen), len(p.rejected)) for p in enc], cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, plan.steps_per_epoch, cfg.epochs)
    model = SequenceLogprobs(load_trained_lm(ctx, "model", cfg.model, tok, cfg))
    # Reference: frozen; with precomputation one pass over every pair, then the model is freed. A LoRA
    # policy's reference is its own base weights (the adapter disabled): no second copy.
    if shares_reference(cfg):
        ref_fwd = WithoutAdapter(model)
    else:
        ref = load_causal_lm(cfg.reference or cfg.model, tok, frozen_dtype(cfg.precision), cfg.attn_implementation)
        ref_fwd = SequenceLogprobs(ref.eval().requires_grad_(False))
    ref_fwd = ctx.place_frozen(ref_fwd)
    chunk, amp = cfg.micro_batch_size or cfg.batch_size, ctx.acc.autocast
    ref_train = ref_held = None
    if cfg.precompute_reference:
        ref_train = pair_logprobs(ref_fwd, enc, tok.pad_token_id, ctx.device, chunk, amp)
        ref_held = pair_logprobs(ref_fwd, enc_held, tok.pad_token_id, ctx.device, chunk, amp)
        ref_fwd = None
    model.train()
    state = ctx.resume_state()
    opt, sched = ctx.optimizer(model.parameters(), steps, state)
    model, opt = ctx.prepare(model, opt)

    step = ctx.start(steps, state)
    while step < steps:
        batch_idx = plan.batch(step)
        frac = 1.0 / len(batch_idx)
        stats_sum: dict[str, float] = {}
        for mb in ctx.accumulate(micro_batches(shard(batch_idx, ctx.rank, ctx.world), cfg.micro_batch_size), model):
            ids, mask, resp = (x.to(ctx.device) for x in collate([enc[i] for i in mb], tok.pad_token_id))
            if ref_train is not None:
                ref = ref_train.select(mb).to(ctx.device)
            else:
                ref = pair_logprobs(ref_fwd, [enc[i] for i in mb], tok.pad_token_id, ctx.device, len(mb), amp)
                ref = ref.to(ctx.device)
            with ctx.acc.autocast():
                s, n = model(ids, mask, resp)
                loss, stats = dpo_loss(cfg, PairLogprobs.from_rows(s, n), ref)
                # Each micro-batch's mean loss weighted by its share of the global batch (DDP averages ranks).
                ctx.acc.backward(loss * len(mb) * frac * ctx.world)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v * len(mb)
        grad_norm = ctx.step(opt, sched)
        step += 1
        metrics = {k: ctx.all_sum(v) / len(batch_idx) for k, v in stats_sum.items()}
        metrics.update({"lr": sched.get_last_lr()[0], "grad_norm": grad_norm})
        ctx.log(step, metrics, show=("loss/dpo", "rewards/accuracy"))
        ctx.maybe_checkpoint(step, steps, {"model": _lm(ctx, model)}, tok, opt, sched)

    final: dict = {"train_comparisons": len(train), "eval_comparisons": len(held), "steps": steps, "loss": cfg.loss}
    if enc_held:
        model.eval()
        if ref_held is None:
            ref_held = pair_logprobs(ref_fwd, enc_held, tok.pad_token_id, ctx.device, chunk, amp)
        with ctx.gathered(model):
            pol = pair_logprobs(ctx.acc.unwrap_model(model), enc_held, tok.pad_token_id, ctx.device, chunk, amp)
        _, stats = dpo_loss(cfg, pol, ref_held)
        final.update({f"eval/{k.split('/')[-1]}": float(stats[k]) for k in
                      ("rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected")})
        final["eval/loss"] = float(stats["loss/dpo"])
        ctx.logger.log(step, final)
    lm, counts = final_model(_lm(ctx, model), cfg)
    return ctx.finish(lm, tok, {**final, **counts}, {"data": file_sha256(cfg.data)})


def _lm(ctx, wrapped):
    return ctx.acc.unwrap_model(wrapped).lm
