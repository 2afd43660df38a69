"""Reward model training on comparisons, K-way rankings or ratings; ensembles of several seeds.

- comparisons: Bradley-Terry on preference pairs (Christiano et al. 2017; Ouyang et al. 2022); chosen and
  rejected responses go through one forward as a batch of 2B rows.
- rankings: all C(K, 2) pairs of each ranking in one batch, weighted 1 / C(K, 2) per ranking (InstructGPT),
  or the Plackett-Luce likelihood of the whole ranking (`--ranking-loss plackett-luce`).
- ratings: regression onto the rating mapped to [-1, 1], or an ordered-logit model with K - 1 learned
  thresholds (`--rating-loss ordinal`); either way the score is a scalar reward.
The reward is read at the last real token. One epoch with an annealed learning rate is the default (docs/ppo.md
item 11). `--ensemble-size N` trains N members with seeds seed, seed + 1, ... (different head inits and
data orders, the same held-out split) into OUT/members/<i>/ and writes OUT/ensemble.json, which
`prefloop.models.ensemble.load_reward_scorer` (PPO, GRPO, best-of-n) reads. The math is in `prefloop.rl`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from prefloop.data import (
    encode_pair,
    file_sha256,
    iter_jsonl,
    read_comparisons,
    read_rankings,
    read_ratings,
    right_pad,
)
from prefloop.data.encode_more import encode_ranking, encode_rating
from prefloop.data.splits import split_by_prompt
from prefloop.data.tokenize import collate_pairs
from prefloop.errors import ConfigError, DataError, require
from prefloop.models import RewardScorer, load_tokenizer, sequence_scores
from prefloop.models.scoring import score_pairs, score_rows
from prefloop.rl import bradley_terry_loss
from prefloop.rl.preference import (
    ordered_thresholds,
    ordinal_probs,
    ordinal_rating_loss,
    plackett_luce_loss,
    ranking_pairs_loss,
    rating_regression_loss,
    scale_ratings,
)
from prefloop.runtime import run_meta, write_json

from .common import BatchPlan, CommonConfig, micro_batches, output_dir, shard, total_steps
from .context import RunContext
from .memory import LoraOptions, final_model, load_trained_reward_model
from .options import EpochsOption, required

ENSEMBLE_FILE = "ensemble.json"


@dataclass(kw_only=True)
class RewardConfig(EpochsOption, CommonConfig, LoraOptions):
    model: str | None = required()
    """Initial model: a causal LM (e.g. the SFT checkpoint) gets a new reward head; a reward model continues."""
    data: Path | None = required()
    """Feedback JSONL: comparisons {"prompt", "chosen", "rejected"} (standard, conversational or implicit
    prompt), rankings {"prompt", "responses", "ranking"} or ratings {"prompt", "response", "rating", "scale"}."""
    data_kind: Literal["auto", "comparisons", "rankings", "ratings"] = "auto"
    """Kind of records in --data; auto: detected from the first record."""
    eval_data: Path | None = None
    """Held-out records of the same kind; default: --eval-fraction of the prompts of --data are held out."""
    eval_fraction: float = 0.1
    """Fraction of prompts held out for evaluation when --eval-data is not given (0 disables)."""
    use_margin: bool = False
    """Comparisons: subtract each pair's `margin` field inside the loss (Llama 2's margin loss)."""
    ranking_loss: Literal["pairs", "plackett-luce"] = "pairs"
    """Rankings: pairs (every pair of a ranking, InstructGPT) or plackett-luce (likelihood of the whole order)."""
    rating_loss: Literal["regression", "ordinal"] = "regression"
    """Ratings: regression (squared error to the rating mapped to [-1, 1]) or ordinal (ordered logit with
    learned thresholds; needs one integer scale)."""
    ensemble_size: int = 1
    """Train N reward models with seeds seed .. seed + N - 1 into OUT/members/<i>/, plus OUT/ensemble.json."""
    lr: float = 5e-5
    warmup_ratio: float = 0.05


def is_reward_model(path: str) -> bool:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        return False
    archs = json.loads(cfg_file.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)




def detect_kind(path: Path) -> str:
    """comparisons, rankings or ratings, from the fields of the first record of `path`."""
    _, first = next(iter(iter_jsonl(path)))
    if "responses" in first or "ranking" in first:
        return "rankings"
    if "rating" in first or "response" in first:
        return "ratings"
    return "comparisons"


READERS = {"comparisons": partial(read_comparisons, allow_identical=False), "rankings": read_rankings,
           "ratings": read_ratings}


# -- one task per kind of feedback: encoding, the loss of a micro-batch, held-out metrics ------------------

class PairTask:
    """Comparisons: Bradley-Terry on (chosen, rejected) pairs, 2B rows per forward."""

    show = ("loss/reward", "reward/accuracy")

    def __init__(self, cfg: RewardConfig, tok, train: list, held: list):
        self.pad, self.use_margin = tok.pad_token_id, cfg.use_margin
        self.enc = [encode_pair(tok, c, cfg.max_length) for c in train]
        self.enc_held = [encode_pair(tok, c, cfg.max_length) for c in held]
        self.margins = [float(c.margin or 0.0) if cfg.use_margin else 0.0 for c in train]
        self.lengths = [max(len(a), len(b)) for a, b in self.enc]

    def make_model(self, rm, state: dict | None) -> nn.Module:
        return RewardScorer(rm)

    def loss(self, model, mb: list[int], device):
        batch = collate_pairs([self.enc[i] for i in mb], self.pad,
                              [self.margins[i] for i in mb] if self.use_margin else None)
        ids, mask, _ = batch.rows()
        scores = model(ids.to(device), mask.to(device))
        margin = None if batch.margin is None else batch.margin.to(device)
        return bradley_terry_loss(scores[:len(mb)], scores[len(mb):], margin)

    def evaluate(self, model, device) -> dict:
        if not self.enc_held:
            return {}
        c, r = score_pairs(model, self.enc_held, self.pad, device)
        return {"eval/accuracy": float((c > r).float().mean()), "eval/margin": float((c - r).mean())}

    def extra(self, model) -> dict:
        return {}


class RankingTask:
    """K-way rankings: every response of a micro-batch of rankings in one forward, then the ranking loss."""

    show = ("loss/reward", "reward/accuracy")

    def __init__(self, cfg: RewardConfig, tok, train: list, held: list):
        self.pad = tok.pad_token_id
        self.loss_fn = plackett_luce_loss if cfg.ranking_loss == "plackett-luce" else ranking_pairs_loss
        self.enc = [(encode_ranking(tok, r, cfg.max_length), r.ranking) for r in train]
        self.enc_held = [(encode_ranking(tok, r, cfg.max_length), r.ranking) for r in held]
        self.lengths = [max(len(x) for x in rows) for rows, _ in self.enc]

    def make_model(self, rm, state: dict | None) -> nn.Module:
        return RewardScorer(rm)

    def _scores(self, model, items: list, device):
        """scores (N, K) with padding, ranks (N, K) (0 = best), mask (N, K) for N rankings of up to K responses."""
        ids, mask = right_pad([row for rows, _ in items for row in rows], self.pad)
        flat = model(ids.to(device), mask.to(device))
        K = max(len(rows) for rows, _ in items)
        n_idx = torch.tensor([n for n, (rows, _) in enumerate(items) for _ in rows], device=device)
        k_idx = torch.tensor([k for rows, _ in items for k in range(len(rows))], device=device)
        scores = flat.new_zeros((len(items), K)).index_put((n_idx, k_idx), flat)
        real = torch.zeros((len(items), K), dtype=torch.bool, device=device)
        real[n_idx, k_idx] = True
        ranks = torch.zeros((len(items), K), dtype=torch.long)
        for n, (_, order) in enumerate(items):
            ranks[n, order] = torch.arange(len(order))
        return scores, ranks.to(device), real

    def loss(self, model, mb: list[int], device):
        return self.loss_fn(*self._scores(model, [self.enc[i] for i in mb], device))

    @torch.no_grad()
    def evaluate(self, model, device) -> dict:
        """Pairwise accuracy over all pairs of the held-out rankings."""
        if not self.enc_held:
            return {}
        correct = pairs = margin = 0.0
        for i in range(0, len(self.enc_held), 16):
            _, stats = ranking_pairs_loss(*self._scores(model, self.enc_held[i:i + 16], device))
            n = float(stats["reward/pairs"])
            correct, pairs, margin = correct + float(stats["reward/accuracy"]) * n, pairs + n, \
                margin + float(stats["reward/margin"]) * n
        return {"eval/accuracy": correct / max(pairs, 1), "eval/margin": margin / max(pairs, 1), "eval/pairs": pairs}

    def extra(self, model) -> dict:
        return {}


class OrdinalScorer(RewardScorer):
    """Reward model plus the K - 1 ordered thresholds of the ordered-logit model; forward returns both, so
    that DDP sees the thresholds used in the forward."""

    def __init__(self, reward_model, raw_thresholds: torch.Tensor):
        super().__init__(reward_model)
        self.raw_thresholds = nn.Parameter(raw_thresholds.clone().float())

    def forward(self, input_ids, attention_mask):
        return sequence_scores(self.rm, input_ids, attention_mask), ordered_thresholds(self.raw_thresholds)


def initial_thresholds(levels: list[int], K: int, min_gap: float = 1e-3) -> torch.Tensor:
    """Raw thresholds (see `ordered_thresholds`) at the logits of the training data's cumulative level
    frequencies, so that a score of 0 (the fresh head) starts from the marginal distribution of ratings."""
    counts = torch.bincount(torch.tensor(levels), minlength=K).double() + 0.5  # add-half smoothing
    cum = (counts.cumsum(0) / counts.sum())[:-1].clamp(1e-4, 1 - 1e-4)
    theta = torch.log(cum / (1 - cum))
    gaps = (theta[1:] - theta[:-1] - min_gap).clamp(min=1e-2)
    return torch.cat([theta[:1], torch.log(torch.expm1(gaps))]).float()  # softplus^-1 of the gaps


class RatingTask:
    """Ratings of single responses: regression onto [-1, 1] or ordered logit."""

    def __init__(self, cfg: RewardConfig, tok, train: list, held: list):
        self.pad, self.ordinal = tok.pad_token_id, cfg.rating_loss == "ordinal"
        self.show = ("loss/rating", "rating/accuracy" if self.ordinal else "rating/mae")
        self.enc = [encode_rating(tok, r, cfg.max_length) for r in train]
        self.enc_held = [encode_rating(tok, r, cfg.max_length) for r in held]
        self.train, self.held = train, held
        self.lengths = [len(x) for x in self.enc]
        if self.ordinal:
            self.lo, self.K = int(train[0].scale[0]), int(train[0].scale[1] - train[0].scale[0]) + 1

    def make_model(self, rm, state: dict | None) -> nn.Module:
        if not self.ordinal:
            return RewardScorer(rm)
        raw = state["raw_thresholds"] if state else initial_thresholds(self._levels(self.train), self.K)
        return OrdinalScorer(rm, raw)

    def _levels(self, records) -> list[int]:
        return [int(r.rating) - self.lo for r in records]

    def loss(self, model, mb: list[int], device):
        ids, mask = right_pad([self.enc[i] for i in mb], self.pad)
        ids, mask = ids.to(device), mask.to(device)
        recs = [self.train[i] for i in mb]
        if self.ordinal:
            scores, th = model(ids, mask)
            return ordinal_rating_loss(scores, torch.tensor(self._levels(recs), device=device), th)
        lo, hi = (torch.tensor([r.scale[j] for r in recs], device=device) for j in (0, 1))
        return rating_regression_loss(model(ids, mask), torch.tensor([r.rating for r in recs], device=device), lo, hi)

    @torch.no_grad()
    def evaluate(self, model, device) -> dict:
        """Ordering accuracy over all held-out pairs with different ratings (on [-1, 1], so scales may differ)
        and the mean absolute error of the predicted rating, in rating units. `model` is the training module,
        or any scorer (an ensemble); the MAE of an ordinal model needs its thresholds, so a plain scorer
        gets the ordering accuracy only there."""
        if not self.held:
            return {}
        s = score_rows(RewardScorer(model.rm) if hasattr(model, "rm") else model, self.enc_held, self.pad, device)
        rating = torch.tensor([r.rating for r in self.held])
        lo, hi = (torch.tensor([r.scale[j] for r in self.held]) for j in (0, 1))
        t = scale_ratings(rating, lo, hi)
        above = t.unsqueeze(1) > t.unsqueeze(0)
        acc = float(((s.unsqueeze(1) > s.unsqueeze(0)) & above).sum() / above.sum().clamp(min=1))
        out = {"eval/pair_accuracy": acc, "eval/pairs": float(above.sum())}
        if self.ordinal and not hasattr(model, "raw_thresholds"):
            return out
        if self.ordinal:
            p = ordinal_probs(s, ordered_thresholds(model.raw_thresholds.detach().float().cpu()))
            predicted = self.lo + (p * torch.arange(self.K, dtype=p.dtype)).sum(1)
        else:
            predicted = lo + (s.clamp(-1, 1) + 1) / 2 * (hi - lo)
        return {**out, "eval/mae": float((predicted - rating).abs().mean())}

    def extra(self, model) -> dict:
        """What prefloop.json records beside the metrics: the ordinal model's scale and thresholds."""
        if not self.ordinal:
            return {}
        th = ordered_thresholds(model.raw_thresholds.detach().float().cpu())
        return {"ordinal": {"scale": [self.lo, self.lo + self.K - 1], "thresholds": th.tolist()}}


TASKS = {"comparisons": PairTask, "rankings": RankingTask, "ratings": RatingTask}


def check_ordinal_scale(records: list, path: Path, scale: tuple[float, float] | None = None) -> None:
    """Ordered logit needs one integer scale (`scale`, default: the first record's) and integer ratings;
    else a DataError naming file:line."""
    lines = [n for n, _ in iter_jsonl(path)]
    lo, hi = scale or records[0].scale
    for r, line in zip(records, lines):
        if r.scale != (lo, hi) or any(x != int(x) for x in (*r.scale, r.rating)):
            problem = (f"--rating-loss ordinal needs integer ratings on one integer scale ([{lo:g}, {hi:g}], that "
                       f"of the first training record), got rating {r.rating:g} on [{r.scale[0]:g}, {r.scale[1]:g}]")
            raise DataError.at(path, line, problem)


def load_feedback(cfg: RewardConfig, split_seed: int) -> tuple[str, list, list]:
    """(kind, train records, held-out records)."""
    kind = detect_kind(cfg.data) if cfg.data_kind == "auto" else cfg.data_kind
    if cfg.use_margin and kind != "comparisons":
        raise ConfigError(f"--use-margin applies to comparisons only, but {cfg.data} holds {kind}")
    records = READERS[kind](cfg.data)
    held = READERS[kind](cfg.eval_data) if cfg.eval_data else None
    if kind == "ratings" and cfg.rating_loss == "ordinal":
        check_ordinal_scale(records, cfg.data)
        if held:
            check_ordinal_scale(held, cfg.eval_data, records[0].scale)
    if held is not None:
        return kind, records, held
    train, held = split_by_prompt(records, cfg.eval_fraction, split_seed)
    if not train:  # e.g. one record: the held-out split took it
        raise ConfigError(f"{cfg.data}: no training records left after holding out {len(held)} of {len(records)} "
                          "(--eval-fraction); give more records, --eval-fraction 0 or --eval-data")
    return kind, train, held


def check_config(cfg: RewardConfig) -> None:
    require(cfg, "model", "data")
    if cfg.ensemble_size < 1:
        raise ConfigError(f"--ensemble-size must be at least 1, got {cfg.ensemble_size}")
    if not 0.0 <= cfg.eval_fraction < 1.0:
        raise ConfigError(f"--eval-fraction must be in [0, 1), got {cfg.eval_fraction}")


def run_reward(cfg: RewardConfig) -> dict:
    check_config(cfg)
    output_dir(cfg, "reward")
    if cfg.ensemble_size > 1:
        return run_ensemble(cfg)
    return train_reward_model(cfg, split_seed=cfg.seed)


def train_reward_model(cfg: RewardConfig, split_seed: int) -> dict:
    ctx = RunContext("reward", cfg)
    tok = load_tokenizer(cfg.model)
    kind, train, held = load_feedback(cfg, split_seed)
    task = TASKS[kind](cfg, tok, train, held)

    plan = BatchPlan(task.lengths, cfg.batch_size, cfg.seed)
    steps = total_steps(cfg, plan.steps_per_epoch, cfg.epochs)
    rm = load_trained_reward_model(ctx, "model", cfg.model, tok, cfg,
                                   new_head=not ctx.resuming and not is_reward_model(cfg.model))
    state = ctx.resume_state()
    model = task.make_model(rm, state)
    model.train()
    opt, sched = ctx.optimizer(model.parameters(), steps, state)
    model, opt = ctx.prepare(model, opt)

    step = ctx.start(steps, state)
    while step < steps:
        batch_idx = plan.batch(step)
        frac = 1.0 / len(batch_idx)
        stats_sum: dict[str, float] = {}
        for mb in ctx.accumulate(micro_batches(shard(batch_idx, ctx.rank, ctx.world), cfg.micro_batch_size), model):
            with ctx.acc.autocast():
                loss, stats = task.loss(model, mb, ctx.device)
            # Each micro-batch's mean loss weighted by its share of the global batch (DDP averages ranks).
            ctx.acc.backward(loss * len(mb) * frac * ctx.world)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * len(mb)
        grad_norm = ctx.step(opt, sched)
        step += 1
        metrics = {k: ctx.all_sum(v) / len(batch_idx) for k, v in stats_sum.items()}
        metrics.update({"lr": sched.get_last_lr()[0], "grad_norm": grad_norm})
        ctx.log(step, metrics, show=task.show)
        ctx.maybe_checkpoint(step, steps, {"model": ctx.acc.unwrap_model(model).rm}, tok, opt, sched,
                             lambda: _extra_params(ctx.acc.unwrap_model(model)))

    final: dict = {"data_kind": kind, f"train_{kind}": len(train), f"eval_{kind}": len(held), "steps": steps}
    unwrapped = ctx.acc.unwrap_model(model)
    model.eval()
    with ctx.gathered(model):  # whole weights (FSDP2) for the evaluation and what task.extra reads
        held_out = task.evaluate(unwrapped, ctx.device)
        extra = task.extra(unwrapped) or None
    if held_out:
        final.update(held_out)
        ctx.logger.log(step, final)
    rm, counts = final_model(unwrapped.rm, cfg)
    return ctx.finish(rm, tok, {**final, **counts}, {"data": file_sha256(cfg.data)}, extra=extra)


def _extra_params(module) -> dict:
    raw = getattr(module, "raw_thresholds", None)
    return {} if raw is None else {"raw_thresholds": raw.detach().cpu()}


def run_ensemble(cfg: RewardConfig) -> dict:
    """N members with seeds seed + i into OUT/members/<i>/ (same held-out split), then OUT/ensemble.json.
    With --resume, finished members are kept and an unfinished one continues from its checkpoint."""
    from accelerate import PartialState

    metas = []
    for i in range(cfg.ensemble_size):
        out = Path(cfg.out) / "members" / str(i)
        done = out / "prefloop.json"
        if cfg.resume and done.is_file() and (out / "model").is_dir():
            metas.append(json.loads(done.read_text()))
            continue
        member = replace(cfg, seed=cfg.seed + i, out=out, ensemble_size=1)
        metas.append(train_reward_model(member, split_seed=cfg.seed))
    manifest = {"members": [f"members/{i}/model" for i in range(cfg.ensemble_size)]}
    per_member = [m.get("metrics", {}) for m in metas]
    metrics: dict = {"ensemble_size": cfg.ensemble_size, "members": per_member}
    for k in per_member[0]:
        vals = [m.get(k) for m in per_member]
        if all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
            metrics[f"{k}_member_mean"] = sum(vals) / len(vals)
    state = PartialState()
    if state.is_main_process:
        metrics.update(evaluate_ensemble(cfg, [str(Path(cfg.out) / m) for m in manifest["members"]], state.device))
    meta = run_meta("reward", cfg, {"data": file_sha256(cfg.data)}, metrics, {"ensemble": manifest})
    if state.is_main_process:
        write_json(Path(cfg.out) / "prefloop.json", meta)
        write_json(Path(cfg.out) / ENSEMBLE_FILE, manifest)  # last: the manifest names only finished members
    return meta


def evaluate_ensemble(cfg: RewardConfig, members: list[str], device) -> dict:
    """Held-out metrics of the ensemble's combined score in each mode (Coste et al. 2023): keys
    `ensemble_<mode>/<metric>`, e.g. `ensemble_mean/accuracy`, beside the members' own."""
    from prefloop.models.ensemble import MODES, load_reward_scorer

    tok = load_tokenizer(cfg.model)
    kind, train, held = load_feedback(cfg, cfg.seed)
    if not held:
        return {}
    task = TASKS[kind](cfg, tok, train, held)
    out = {}
    for mode in MODES:
        scorer = load_reward_scorer(",".join(members), tok, mode).to(device)
        for k, v in task.evaluate(scorer, device).items():
            out[f"ensemble_{mode}/{k.split('/')[-1]}"] = v
    return out
