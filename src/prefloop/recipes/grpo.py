"""Critic-free policy gradient with K samples per prompt: GRPO (Shao et al. 2024) and RLOO (Ahmadian et al.
2024; Kool et al. 2019). The K samples of a prompt are each other's baseline, so no critic is trained.

One update, top to bottom:
  1. rollout    K samples of each of rollout-batch-size / K prompts (our KV-cache sampler), in consecutive rows
  2. score      reward model or scoring function per response; log-probs of the reference (and of the
                policy when the batch is used for more than one optimizer step)
  3. advantages optionally KL folded into the score (k1 per sequence), then the group baseline: GRPO's
                (r - mean) / std (or r - mean, Dr. GRPO) or RLOO's leave-one-out mean
  4. optimise   clipped surrogate (plus a k3 KL loss term unless KL is in the reward), token- or sequence-
                averaged, over epochs of shuffled minibatches. One epoch with one minibatch is on-policy
                REINFORCE with a baseline (the ratio is exactly 1); more use the PPO ratio and clipping.
The math lives in prefloop.rl.group; this file owns models, sampling, distribution and logging.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from prefloop.data import encode_prompt, file_sha256, left_pad, read_prompts, render_prompt
from prefloop.errors import ConfigError, require
from prefloop.models import ResponseForward, load_causal_lm, load_tokenizer
from prefloop.models.ensemble import EnsembleMode
from prefloop.rl import entropy_from_logits, kl_k1, kl_k3, logprobs_from_logits, masked_mean, masked_sum
from prefloop.rl.group import (
    group_advantages,
    kl_penalised_scores,
    leave_one_out_advantages,
    pg_loss_sequence_mean,
    pg_loss_token_mean,
)
from prefloop.rollout import sample
from prefloop.runtime.accel import frozen_dtype

from .common import (
    CommonConfig,
    GoldFn,
    Timer,
    chunks,
    decode_responses,
    make_optimizer,
    make_scheduler,
    micro_batches,
    sampling_config,
)
from .context import RunContext
from .rewards import load_reward_source
from .sample import device_generator

AdvantageFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict]]


@dataclass(kw_only=True)
class GroupPGConfig(CommonConfig):
    policy: str | None = None
    """Policy to optimise (usually the SFT checkpoint); also the KL reference unless --reference is given."""
    reward: str | None = None
    """Reward model directory (a sequence classifier with one output), an ensemble directory (with
    ensemble.json) or several directories joined by commas."""
    ensemble_mode: EnsembleMode = "mean"
    """How an ensemble's scores combine: mean, min (worst case) or mean-std (mean - lambda * std)."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-mode mean-std."""
    reward_fn: str | None = None
    """Scoring function instead of a reward model: package.module:function, called as
    fn(prompts, responses) and returning one float per response (e.g. a verifier); or world:DIR for a
    synthetic world's gold judge."""
    prompts: Path | None = None
    """Prompts JSONL: {"prompt": text or messages}."""
    reference: str | None = None
    """Reference policy of the KL term (default: --policy); not loaded when --kl-coef is 0."""
    max_steps: int | None = 100
    """Number of updates (each samples --rollout-batch-size completions)."""
    num_generations: int = 4
    """Samples per prompt (K, the group size; at least 2)."""
    rollout_batch_size: int = 64
    """Completions sampled per update (global; a multiple of --num-generations): rollout-batch-size / K prompts."""
    batch_size: int = 64
    """Completions per optimizer step (minibatch); rollout-batch-size / batch-size minibatches per epoch."""
    epochs_per_rollout: int = 1
    """Passes over each rollout batch. 1 with --batch-size = --rollout-batch-size is on-policy REINFORCE with a
    group baseline; more passes (or minibatches) use the clipped importance ratio to the sampling policy."""
    clip_eps: float = 0.2
    """Clip range of the importance ratio (used once the policy has moved away from the sampling policy)."""
    loss_aggregation: Literal["token", "sequence"] = "token"
    """token: mean over all tokens of the minibatch (long responses weigh more); sequence: mean per response,
    then over responses (GRPO's original 1/|o| normalisation)."""
    kl_coef: float = 0.05
    """KL coefficient beta (0: no reference model, no KL)."""
    kl_in_reward: bool = False
    """Fold KL into the score (r - beta * sum of k1 over the response) instead of a k3 loss term."""
    no_eos_penalty: float | None = None
    """Score given to a response that never ends instead of the reward's (None: keep the reward)."""
    max_new_tokens: int = 32
    temperature: float = 0.7
    """Sampling temperature; the same temperature scales old, new and reference log-probs (docs/ppo.md item 5)."""
    top_p: float = 1.0
    top_k: int = 0
    stop_at_eos: bool = True
    """Stop a response at EOS; with --no-stop-at-eos sample fixed length (with --truncate-token)."""
    truncate_token: str | None = None
    """Fixed-length mode: mask everything after the first occurrence of this token (e.g. '.')."""
    lr: float = 1e-5
    adam_eps: float = 1e-5
    max_length: int = 256
    """Maximum prompt + response tokens; prompts are cut from the left to fit."""


@dataclass(kw_only=True)
class GRPOConfig(GroupPGConfig):
    scale_rewards: bool = True
    """Divide group-centred rewards by the group's std (GRPO); --no-scale-rewards only centres them (Dr. GRPO)."""
    loss_aggregation: Literal["token", "sequence"] = "sequence"
    """token: mean over all tokens of the minibatch (Dr. GRPO / DAPO); sequence: mean per response, then over
    responses (GRPO's original 1/|o| normalisation)."""
    kl_coef: float = 0.04
    """KL coefficient beta of the k3 loss term (Shao et al. 2024 use 0.04); 0: no reference model."""


@dataclass(kw_only=True)
class RLOOConfig(GroupPGConfig):
    kl_in_reward: bool = True
    """Fold KL into the score (r - beta * sum of k1 over the response, as Ahmadian et al. 2024); with
    --no-kl-in-reward a k3 loss term instead."""


def prompt_indices(n_prompts: int, per_update: int, update: int, start: int, count: int, seed: int) -> list[int]:
    """Prompt indices `start .. start + count` of update `update`, when each update takes `per_update`
    prompts from a seeded permutation per pass over the data (the same on every process)."""
    out = []
    for k in range(update * per_update + start, update * per_update + start + count):
        epoch, i = divmod(k, n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(perm[i]))
    return out


@torch.no_grad()
def _rollout_logprobs(fwd, ids, mask, r_ids, r_mask, temperature: float, chunk: int) -> torch.Tensor:
    """(B, R) tempered log-probs of the response tokens under a ResponseForward, 0 after the response."""
    R = r_ids.shape[1]
    parts = [logprobs_from_logits(fwd(ids[s], mask[s], R)[0], r_ids[s], temperature) for s in chunks(len(ids), chunk)]
    return torch.cat(parts) * r_mask.float()


class GroupTrainer:
    """Models and state of a GRPO or RLOO run; `run()` is the explicit loop, `advantage_fn` the baseline."""

    def __init__(self, cfg: GroupPGConfig, recipe: str, advantage_fn: AdvantageFn, gold_fn: GoldFn | None = None):
        require(cfg, "policy", "prompts")
        K = cfg.num_generations
        if K < 2:
            raise ConfigError(f"--num-generations must be at least 2 (a group baseline needs company), got {K}")
        if cfg.rollout_batch_size % cfg.batch_size:
            raise ConfigError("--rollout-batch-size must be a multiple of --batch-size")
        if cfg.epochs_per_rollout < 1:
            raise ConfigError("--epochs-per-rollout must be at least 1")
        self.cfg, self.gold_fn, self.advantage_fn = cfg, gold_fn, advantage_fn
        self.tok = tok = load_tokenizer(cfg.policy)
        # The reward first: a bad --reward-fn or prompt fails before any model is loaded or file written.
        self.reward = load_reward_source(cfg.reward, cfg.reward_fn, tok, cfg.ensemble_mode, cfg.ensemble_lambda)
        max_prompt = cfg.max_length - cfg.max_new_tokens
        if max_prompt < 1:
            raise ConfigError("--max-length must exceed --max-new-tokens")
        self.prompt_texts = [render_prompt(tok, p.prompt) for p in read_prompts(cfg.prompts)]
        self.reward.check(self.prompt_texts, cfg.prompts)
        self.prompt_ids = [encode_prompt(tok, t)[-max_prompt:] for t in self.prompt_texts]
        self.sampling = sampling_config(cfg, tok)

        self.ctx = ctx = RunContext(recipe, cfg)
        if cfg.rollout_batch_size % (K * ctx.world) or cfg.batch_size % ctx.world:
            raise ConfigError("--rollout-batch-size must be a multiple of --num-generations times the number of "
                              "processes, and --batch-size a multiple of the number of processes")
        self.reward.to(ctx.device)
        policy = load_causal_lm(ctx.init_path("policy", cfg.policy), tok)
        self.ref_fwd = None
        if cfg.kl_coef > 0:
            ref = load_causal_lm(cfg.reference or cfg.policy, tok, frozen_dtype(cfg.precision))
            ref.eval().requires_grad_(False)
            self.ref_fwd = ResponseForward(ref.to(ctx.device))
        self.policy_fwd = ResponseForward(policy)
        # One epoch over one minibatch: the sampling policy is the policy being differentiated, so its
        # log-probs need no separate forward (ratio exactly 1: REINFORCE).
        self.on_policy = cfg.epochs_per_rollout == 1 and cfg.batch_size == cfg.rollout_batch_size
        n_minibatches = cfg.rollout_batch_size // cfg.batch_size
        self.opt = make_optimizer(self.policy_fwd.parameters(), cfg)
        self.sched = make_scheduler(self.opt, cfg, cfg.max_steps * cfg.epochs_per_rollout * n_minibatches)
        # Shuffles draw on the CPU; samples on the device the sampler runs on.
        self.gen = torch.Generator().manual_seed(ctx.process_seed)
        self.sample_gen = device_generator(ctx.device, ctx.process_seed)
        self.state = ctx.ckpt.load_state() if ctx.resuming else None
        if self.state:
            self.opt.load_state_dict(self.state["optimizer"])
            self.sched.load_state_dict(self.state["scheduler"])
            self.gen.set_state(self.state["generator"][ctx.rank][0])
            self.sample_gen.set_state(self.state["generator"][ctx.rank][1])
        self.policy_fwd, self.opt = ctx.acc.prepare(self.policy_fwd, self.opt)
        self.timer = Timer()
        self.loss_fn = pg_loss_token_mean if cfg.loss_aggregation == "token" else pg_loss_sequence_mean

    # -- helpers --------------------------------------------------------------------------------------
    def _policy(self):
        return self.ctx.acc.unwrap_model(self.policy_fwd).lm

    def _prompt_batch(self, update: int) -> list[int]:
        """This process's prompts of an update (each is sampled K times)."""
        per_rank = self.cfg.rollout_batch_size // self.cfg.num_generations // self.ctx.world
        return prompt_indices(len(self.prompt_ids), per_rank * self.ctx.world, update, self.ctx.rank * per_rank,
                              per_rank, self.cfg.seed)

    def _state(self) -> dict:
        mine = (self.gen.get_state(), self.sample_gen.get_state())
        gens = [mine]
        if self.ctx.world > 1:
            import torch.distributed as dist

            gens = [None] * self.ctx.world
            dist.all_gather_object(gens, mine)
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "generator": gens}

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        update = ctx.start(cfg.max_steps, self.state)
        while update < cfg.max_steps:
            metrics = self.step(update)
            update += 1
            ctx.log(update, metrics, show=("rollout/score_mean", "kl/k1", "gold/mean"))
            ctx.maybe_checkpoint(update, cfg.max_steps, {"policy": self._policy()}, self.tok, self._state)
        last = ctx.logger.history[-1] if ctx.logger.history else {}
        final = {k: last.get(k) for k in ("rollout/score_mean", "kl/k1", "gold/mean")}
        final["time_split"] = dict(self.timer.totals)
        hashes = {"prompts": file_sha256(cfg.prompts)}
        return ctx.finish(self._policy(), self.tok, final, hashes, extra={"reward": self.reward.name})

    def step(self, update: int) -> dict:
        cfg, ctx, T, K = self.cfg, self.ctx, self.cfg.temperature, self.cfg.num_generations
        idx = self._prompt_batch(update)
        rows = [i for i in idx for _ in range(K)]
        # 1. rollout: the K samples of a prompt in consecutive rows (the groups of rl.group)
        with self.timer.phase("sample"):
            policy = self._policy()
            policy.eval()
            q_ids, q_mask = left_pad([self.prompt_ids[i] for i in rows], self.tok.pad_token_id)
            out = sample(policy, q_ids.to(ctx.device), q_mask.to(ctx.device), self.sampling,
                         generator=self.sample_gen)
        # 2. score, and the log-probs the update needs (reference; old policy when not on-policy)
        with self.timer.phase("score"):
            prompts = [self.prompt_texts[i] for i in rows]
            responses = decode_responses(self.tok, out.response_ids, out.response_mask)
            raw = self.reward(prompts, responses, out).to(ctx.device)
            scores = raw
            if cfg.no_eos_penalty is not None:
                scores = torch.where(out.ended, scores, torch.full_like(scores, cfg.no_eos_penalty))
            ids = torch.cat([out.query_ids, out.response_ids], 1)
            attn = torch.cat([out.query_mask, out.response_mask], 1)
            chunk = cfg.micro_batch_size or cfg.batch_size
            old_logp = None
            if not self.on_policy:
                pf = ctx.acc.unwrap_model(self.policy_fwd)
                pf.eval()
                old_logp = _rollout_logprobs(pf, ids, attn, out.response_ids, out.response_mask, T, chunk)
            ref_logp = None
            if self.ref_fwd is not None:
                ref_logp = _rollout_logprobs(self.ref_fwd, ids, attn, out.response_ids, out.response_mask, T, chunk)
            # 3. advantages: KL folded into the score (optional), then the group baseline
            rewards = scores
            if cfg.kl_in_reward and ref_logp is not None:
                logp = old_logp if old_logp is not None else out.logprobs
                rewards, _ = kl_penalised_scores(scores, logp, ref_logp, out.response_mask, cfg.kl_coef)
            advantages, adv_stats = self.advantage_fn(rewards, K)
        # 4. optimise: epochs over shuffled minibatches, micro-batches accumulate gradients
        with self.timer.phase("update"):
            train_stats = self._optimise(ids, attn, out, old_logp, ref_logp, advantages)
        metrics = self._rollout_metrics(out, raw, scores, rewards, old_logp, ref_logp, idx)
        metrics.update(adv_stats)
        metrics.update({"kl/coef": cfg.kl_coef, "lr": self.sched.get_last_lr()[0]})
        metrics.update(train_stats)
        metrics.update({f"time/{k}": v for k, v in self.timer.totals.items()})
        return metrics

    def _optimise(self, ids, attn, out, old_logp, ref_logp, advantages) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.policy_fwd.train()
        n_local, R = ids.shape[0], out.response_ids.shape[1]
        mb_size = cfg.batch_size // ctx.world
        kl_loss_coef = 0.0 if cfg.kl_in_reward else cfg.kl_coef
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.epochs_per_rollout):
            perm = torch.randperm(n_local, generator=self.gen)
            for mb_start in range(0, n_local, mb_size):
                mb = perm[mb_start:mb_start + mb_size].tolist()
                mb_tokens = float(out.response_mask[mb].sum())
                micro = micro_batches(mb, cfg.micro_batch_size)
                for j, mi in enumerate(micro):
                    mask = out.response_mask[mi].float()
                    sync = nullcontext() if j == len(micro) - 1 else ctx.acc.no_sync(self.policy_fwd)
                    with sync, ctx.acc.autocast():
                        logits, _ = self.policy_fwd(ids[mi], attn[mi], R)
                        new_logp = logprobs_from_logits(logits, out.response_ids[mi], cfg.temperature)
                        loss, stats = self.loss_fn(new_logp, None if old_logp is None else old_logp[mi],
                                                   advantages[mi], mask, cfg.clip_eps,
                                                   None if ref_logp is None else ref_logp[mi], kl_loss_coef)
                        # Each micro-batch's share of the minibatch mean: tokens (token mean) or rows.
                        share = float(mask.sum()) / max(mb_tokens, 1.0) if cfg.loss_aggregation == "token" \
                            else len(mi) / len(mb)
                        ctx.acc.backward(loss * share)
                    with torch.no_grad():
                        stats["policy/entropy"] = float(masked_mean(entropy_from_logits(logits.detach(),
                                                                                       cfg.temperature), mask))
                        if self.on_policy:  # the sampler's log-probs against the training forward's
                            stats["rollout/logprob_gap"] = float(masked_mean(
                                (new_logp.detach() - out.logprobs[mi]).abs(), mask))
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + (v if v == v else 0.0)
                    count += 1
                if cfg.max_grad_norm:
                    ctx.acc.clip_grad_norm_(self.policy_fwd.parameters(), cfg.max_grad_norm)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
        return {k: v / max(count, 1) for k, v in sums.items()}

    def _rollout_metrics(self, out, raw, scores, rewards, old_logp, ref_logp, idx) -> dict:
        ctx, cfg = self.ctx, self.cfg
        n = cfg.rollout_batch_size

        def mean(x):
            return ctx.all_sum(float(x.float().sum())) / n

        mask = out.response_mask
        m = {"rollout/score_mean": mean(scores), "rollout/reward_raw": mean(raw),
             "rollout/reward_total": mean(rewards), "rollout/response_length": mean(mask.sum(1)),
             "rollout/no_eos_fraction": mean(~out.ended)}
        m["rollout/score_std"] = max(0.0, ctx.all_sum(float((scores.float() ** 2).sum())) / n
                                     - m["rollout/score_mean"] ** 2) ** 0.5
        logp = old_logp if old_logp is not None else out.logprobs
        if old_logp is not None:
            m["rollout/logprob_gap"] = float(masked_mean((old_logp - out.logprobs).abs(), mask))
        if ref_logp is not None:
            m["kl/k1"] = mean(masked_sum(kl_k1(logp, ref_logp), mask, dim=1))
            m["kl/k3"] = mean(masked_sum(kl_k3(logp, ref_logp), mask, dim=1))
            if cfg.kl_in_reward:
                m["rollout/kl_penalty"] = -cfg.kl_coef * m["kl/k1"]
        if self.gold_fn is not None:
            responses = decode_responses(self.tok, out.response_ids, out.response_mask)
            prompts = [self.prompt_texts[i] for i in idx for _ in range(cfg.num_generations)]
            m["gold/mean"] = mean(torch.tensor(self.gold_fn(prompts, responses)))
        return m


def run_grpo(cfg: GRPOConfig, gold_fn: GoldFn | None = None) -> dict:
    """GRPO: group-relative advantages (Shao et al. 2024), or only mean-centred with --no-scale-rewards."""
    return GroupTrainer(cfg, "grpo", partial(group_advantages, scale_by_std=cfg.scale_rewards), gold_fn).run()


def run_rloo(cfg: RLOOConfig, gold_fn: GoldFn | None = None) -> dict:
    """RLOO: leave-one-out baselines (Kool et al. 2019; Ahmadian et al. 2024)."""
    return GroupTrainer(cfg, "rloo", leave_one_out_advantages, gold_fn).run()
