"""PPO with a KL penalty to a reference policy (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

One update, top to bottom (see docs/ppo.md for the details each step follows):
  1. rollout    sample completions of a batch of prompts from the current policy (our KV-cache sampler)
  2. score      reward model at the last real token (normalised; fixed penalty if no EOS), log-probs of
                the policy and the reference, values of the critic
  3. advantages per-token KL penalty + score at the last token, GAE, whitened advantages
  4. optimise   PPO epochs over shuffled minibatches (gradient accumulation over micro-batches)
  5. control    adaptive or fixed KL coefficient; log everything
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from prefloop.data import encode_prompt, file_sha256, left_pad, read_prompts, render_prompt
from prefloop.errors import ConfigError, require
from prefloop.models import (
    CriticForward,
    ResponseForward,
    ValueHead,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from prefloop.models.ensemble import EnsembleMode, load_reward_scorer, reward_members
from prefloop.rl import (
    AdaptiveKLController,
    FixedKLController,
    RolloutBatch,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    token_rewards,
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


@dataclass(kw_only=True)
class PPOConfig(CommonConfig):
    policy: str | None = None
    """Policy to optimise (usually the SFT checkpoint); also the KL reference unless --reference is given."""
    reward: str | None = None
    """Reward model directory (a sequence classifier with one output), an ensemble directory (with
    ensemble.json, as `prefloop reward --ensemble-size N` writes) or several directories joined by commas."""
    ensemble_mode: EnsembleMode = "mean"
    """How an ensemble's scores combine: mean, min (worst case) or mean-std (mean - lambda * std)."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-mode mean-std."""
    prompts: Path | None = None
    """Prompts JSONL: {"prompt": text or messages}."""
    reference: str | None = None
    """Reference policy of the KL penalty (default: --policy)."""
    critic: Literal["reward", "value-head"] = "reward"
    """reward: a separate critic initialised from the reward model; value-head: a head on the policy trunk."""
    max_steps: int | None = 100
    """Number of PPO updates (each samples --rollout-batch-size completions)."""
    rollout_batch_size: int = 64
    """Completions sampled per PPO update (global, over all processes)."""
    batch_size: int = 64
    """Completions per optimizer step (minibatch); rollout-batch-size / batch-size minibatches per epoch."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    max_new_tokens: int = 32
    temperature: float = 0.7
    """Sampling temperature; the same temperature scales old, new and reference log-probs (docs/ppo.md item 5)."""
    top_p: float = 1.0
    top_k: int = 0
    stop_at_eos: bool = True
    """Stop a response at EOS; with --no-stop-at-eos sample fixed length (with --truncate-token)."""
    truncate_token: str | None = None
    """Fixed-length mode: mask everything after the first occurrence of this token (e.g. '.')."""
    no_eos_penalty: float | None = -1.0
    """Score given to a response that never ends instead of the reward model's (None: keep it)."""
    kl_coef: float = 0.05
    """KL coefficient beta (initial value when adaptive)."""
    kl_target: float | None = None
    """Adaptive KL controller target in nats per sequence (None: fixed coefficient)."""
    kl_horizon: int = 10000
    keep_every: int = 0
    """Keep a copy of the policy every N updates in OUT/checkpoints/step-N (0: none), e.g. for
    `prefloop eval checkpoints` (gold and proxy reward against KL over the run)."""
    normalize_reward: bool = True
    """Gain and bias so that samples of the initial policy score mean 0 and std 1 (docs/ppo.md item 10)."""
    whiten_rewards: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    clip_eps_value: float = 0.2
    vf_coef: float = 0.1
    critic_lr: float | None = None
    """Learning rate of the critic (default: --lr)."""
    lr: float = 1e-5
    adam_eps: float = 1e-5
    max_length: int = 256
    """Maximum prompt + response tokens; prompts are cut from the left to fit."""


def _kl_controller(cfg: PPOConfig):
    if cfg.kl_target is not None:
        return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


@torch.no_grad()
def _forward_rollout(policy_fwd, critic_fwd, ref, rm, q_ids, q_mask, r_ids, r_mask, temperature, chunk):
    """Old log-probs, reference log-probs, values and raw scores for a sampled batch (docs/ppo.md items 5, 8)."""
    ids, mask = torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1)
    R = r_ids.shape[1]
    logp, ref_logp, values, scores = [], [], [], []
    ref_fwd = ResponseForward(ref)
    for s in chunks(ids.shape[0], chunk):
        logits, v = policy_fwd(ids[s], mask[s], R)
        logp.append(logprobs_from_logits(logits, r_ids[s], temperature))
        ref_logp.append(logprobs_from_logits(ref_fwd(ids[s], mask[s], R)[0], r_ids[s], temperature))
        values.append(critic_fwd(ids[s], mask[s], R) if critic_fwd is not None else v)
        scores.append(rm(ids[s], mask[s]))
    m = r_mask.float()
    return torch.cat(logp) * m, torch.cat(ref_logp) * m, torch.cat(values) * m, torch.cat(scores)


class PPOTrainer:
    """Holds the models and state of a PPO run; `run()` is the explicit loop."""

    def __init__(self, cfg: PPOConfig, gold_fn: GoldFn | None = None):
        require(cfg, "policy", "reward", "prompts")
        if cfg.rollout_batch_size % cfg.batch_size:
            raise ConfigError("--rollout-batch-size must be a multiple of --batch-size")
        self.cfg, self.gold_fn = cfg, gold_fn
        self.ctx = ctx = RunContext("ppo", cfg)
        if cfg.rollout_batch_size % ctx.world:
            raise ConfigError("--rollout-batch-size must be divisible by the number of processes")
        self.tok = tok = load_tokenizer(cfg.policy)
        max_prompt = cfg.max_length - cfg.max_new_tokens
        if max_prompt < 1:
            raise ConfigError("--max-length must exceed --max-new-tokens")
        self.prompt_texts = [render_prompt(tok, p.prompt) for p in read_prompts(cfg.prompts)]
        self.prompt_ids = [encode_prompt(tok, t)[-max_prompt:] for t in self.prompt_texts]
        self.sampling = sampling_config(cfg, tok)

        # Models: the policy (trained), the frozen reference and reward model, and the critic.
        policy = load_causal_lm(ctx.init_path("policy", cfg.policy), tok)
        frozen = frozen_dtype(cfg.precision)
        self.ref = load_causal_lm(cfg.reference or cfg.policy, tok, frozen).eval().requires_grad_(False)
        self.rm = load_reward_scorer(cfg.reward, tok, cfg.ensemble_mode, cfg.ensemble_lambda, frozen)
        self.ref.to(ctx.device)
        self.rm.to(ctx.device)
        params = []
        self.critic_fwd = None
        if cfg.critic == "reward":
            # An ensemble's first member initialises the critic.
            critic_init = ctx.init_path("critic", reward_members(cfg.reward)[0])
            self.critic_fwd = CriticForward(load_reward_model(critic_init, tok))
            self.policy_fwd = ResponseForward(policy)
            params = [{"params": list(self.critic_fwd.parameters()), "lr": cfg.critic_lr or cfg.lr}]
        else:
            head = ValueHead(policy.config.get_text_config().hidden_size)
            if ctx.resuming:
                head.load_state_dict(torch.load(ctx.ckpt.dir / "value_head.pt", map_location="cpu"))
            self.policy_fwd = ResponseForward(policy, head)
        params.insert(0, {"params": list(self.policy_fwd.parameters()), "lr": cfg.lr})

        self.n_minibatches = cfg.rollout_batch_size // cfg.batch_size
        self.opt = make_optimizer(params, cfg)
        self.sched = make_scheduler(self.opt, cfg, cfg.max_steps * cfg.ppo_epochs * self.n_minibatches)
        self.kl_ctl = _kl_controller(cfg)
        self.gen = torch.Generator().manual_seed(ctx.process_seed)
        self.reward_gain, self.reward_bias = 1.0, 0.0
        self.state = ctx.ckpt.load_state() if ctx.resuming else None
        if self.state:
            self.opt.load_state_dict(self.state["optimizer"])
            self.sched.load_state_dict(self.state["scheduler"])
            self.kl_ctl.load_state_dict(self.state["kl_controller"])
            self.gen.set_state(self.state["generator"][ctx.rank])
            self.reward_gain, self.reward_bias = self.state["reward_norm"]
        modules = [self.policy_fwd] + ([self.critic_fwd] if self.critic_fwd is not None else [])
        prepared = ctx.acc.prepare(*modules, self.opt)
        self.policy_fwd, self.opt = prepared[0], prepared[-1]
        if self.critic_fwd is not None:
            self.critic_fwd = prepared[1]
        self.timer = Timer()

    # -- helpers --------------------------------------------------------------------------------------
    def _unwrap(self, m):
        return self.ctx.acc.unwrap_model(m) if m is not None else None

    def _prompt_batch(self, update: int) -> list[int]:
        """This process's prompt indices for an update: a seeded permutation per pass over the prompts."""
        n_local = self.cfg.rollout_batch_size // self.ctx.world
        n = len(self.prompt_ids)
        start = update * self.cfg.rollout_batch_size + self.ctx.rank * n_local
        out = []
        for k in range(start, start + n_local):
            epoch, i = divmod(k, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
            out.append(int(perm[i]))
        return out

    def _sample(self, idx: list[int]):
        policy = self._unwrap(self.policy_fwd).lm
        policy.eval()
        q_ids, q_mask = left_pad([self.prompt_ids[i] for i in idx], self.tok.pad_token_id)
        q_ids, q_mask = q_ids.to(self.ctx.device), q_mask.to(self.ctx.device)
        out = sample(policy, q_ids, q_mask, self.sampling, generator=self.gen)
        return out

    def _gather_mean_std(self, x: torch.Tensor) -> tuple[float, float]:
        allx = self.ctx.acc.gather(x.to(self.ctx.device).float())
        return float(allx.mean()), float(allx.std().clamp(min=1e-6))

    def calibrate_reward(self) -> torch.Tensor:
        """docs/ppo.md item 10: rewards of the initial policy's samples get mean 0 and std 1. Returns the raw
        scores of this process's calibration samples."""
        out = self._sample(self._prompt_batch(0))
        with torch.no_grad():
            ids = torch.cat([out.query_ids, out.response_ids], 1)
            mask = torch.cat([out.query_mask, out.response_mask], 1)
            scores = self.rm(ids, mask)
        mean, std = self._gather_mean_std(scores)
        self.reward_gain, self.reward_bias = 1.0 / std, -mean / std
        return scores

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if cfg.normalize_reward and not self.state:
            self.calibrate_reward()
        update = ctx.start(cfg.max_steps, self.state)
        while update < cfg.max_steps:
            metrics = self.step(update)
            update += 1
            ctx.log(update, metrics, show=("rollout/score_mean", "kl/k1", "gold/mean"))
            ctx.maybe_checkpoint(update, cfg.max_steps, self._checkpoint_models(), self.tok, self._state)
            if cfg.keep_every and update % cfg.keep_every == 0 and update < cfg.max_steps and ctx.is_main:
                # A plain HF copy of the policy, for `prefloop eval checkpoints` (over-optimisation over the run).
                self._unwrap(self.policy_fwd).lm.save_pretrained(ctx.out / "checkpoints" / f"step-{update}")
                self.tok.save_pretrained(ctx.out / "checkpoints" / f"step-{update}")
        policy = self._unwrap(self.policy_fwd).lm
        last = ctx.logger.history[-1] if ctx.logger.history else {}
        final = {k: last.get(k) for k in ("rollout/score_mean", "kl/k1", "kl/coef", "gold/mean")}
        final["time_split"] = dict(self.timer.totals)
        extra = {"reward_norm": [self.reward_gain, self.reward_bias]}
        meta = ctx.finish(policy, self.tok, final, {"prompts": file_sha256(cfg.prompts)}, extra=extra)
        if ctx.is_main and self.critic_fwd is not None:
            self._unwrap(self.critic_fwd).critic.save_pretrained(ctx.out / "critic")
        elif ctx.is_main:
            torch.save(self._unwrap(self.policy_fwd).value_head.state_dict(), ctx.out / "value_head.pt")
        return meta

    def _checkpoint_models(self) -> dict:
        models = {"policy": self._unwrap(self.policy_fwd).lm}
        if self.critic_fwd is not None:
            models["critic"] = self._unwrap(self.critic_fwd).critic
        else:
            models["value_head"] = self._unwrap(self.policy_fwd).value_head
        return models

    def _state(self) -> dict:
        gens = [None] * self.ctx.world
        gens[self.ctx.rank] = self.gen.get_state()
        if self.ctx.world > 1:
            import torch.distributed as dist

            dist.all_gather_object(gens, self.gen.get_state())
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "kl_controller": self.kl_ctl.state_dict(), "generator": gens,
                "reward_norm": [self.reward_gain, self.reward_bias]}

    def step(self, update: int) -> dict:
        cfg, ctx, T = self.cfg, self.ctx, self.cfg.temperature
        idx = self._prompt_batch(update)
        # 1. rollout
        with self.timer.phase("sample"):
            out = self._sample(idx)
        # 2. score: old log-probs (recomputed by a training-style forward), reference, values, reward
        with self.timer.phase("score"):
            pf, cf = self._unwrap(self.policy_fwd), self._unwrap(self.critic_fwd)
            pf.eval()
            chunk = cfg.micro_batch_size or cfg.batch_size
            logp, ref_logp, values, raw = _forward_rollout(pf, cf, self.ref, self.rm, out.query_ids, out.query_mask,
                                                           out.response_ids, out.response_mask, T, chunk)
            scores = raw * self.reward_gain + self.reward_bias
            if cfg.no_eos_penalty is not None:  # the "EOS trick" (docs/ppo.md item 4)
                scores = torch.where(out.ended.to(scores.device), scores, torch.full_like(scores, cfg.no_eos_penalty))
            mask = out.response_mask.float()
            # 3. per-token rewards (KL penalty + score at the last token), GAE, whitened advantages
            rewards, kl = token_rewards(scores, logp, ref_logp, mask, self.kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False, distributed=True)
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask, distributed=True)
        batch = RolloutBatch(query_ids=out.query_ids, query_mask=out.query_mask, response_ids=out.response_ids,
                             response_mask=out.response_mask, logprobs=logp, ref_logprobs=ref_logp, values=values,
                             scores=scores, rewards=rewards, advantages=advantages, returns=returns)
        # 4. optimise: PPO epochs over shuffled minibatches, micro-batches accumulate gradients
        with self.timer.phase("update"):
            train_stats = self._optimise(batch)
        # 5. KL control and logging (sequence-level KL summed over tokens, averaged over the batch)
        seq_kl = kl.sum(1)
        kl_mean = ctx.all_sum(float(seq_kl.sum())) / cfg.rollout_batch_size
        self.kl_ctl.update(kl_mean, cfg.rollout_batch_size)
        metrics = self._rollout_metrics(out, raw, scores, kl, logp, ref_logp, mask, idx)
        metrics.update({"kl/k1": kl_mean, "kl/coef": self.kl_ctl.value, "lr": self.sched.get_last_lr()[0]})
        metrics.update(train_stats)
        metrics.update({f"time/{k}": v for k, v in self.timer.totals.items()})
        return metrics

    def _rollout_metrics(self, out, raw, scores, kl, logp, ref_logp, mask, idx) -> dict:
        ctx, cfg = self.ctx, self.cfg
        n = cfg.rollout_batch_size

        def mean(x):
            return ctx.all_sum(float(x.float().sum())) / n

        lengths = mask.sum(1)
        k3 = (kl_k3(logp, ref_logp) * mask).sum(1)
        gap = ((out.logprobs - logp).abs() * mask).sum() / mask.sum().clamp(min=1)
        m = {"rollout/score_mean": mean(scores), "rollout/reward_model_raw": mean(raw),
             "rollout/kl_penalty": -self.kl_ctl.value * mean(kl.sum(1)),
             "rollout/response_length": mean(lengths), "rollout/no_eos_fraction": mean(~out.ended),
             "kl/k3": mean(k3), "rollout/logprob_gap": float(gap)}
        m["rollout/reward_total"] = m["rollout/score_mean"] + m["rollout/kl_penalty"]
        if self.gold_fn is not None:
            responses = decode_responses(self.tok, out.response_ids, out.response_mask)
            gold = torch.tensor(self.gold_fn([self.prompt_texts[i] for i in idx], responses))
            m["gold/mean"] = mean(gold)
        return m

    def _optimise(self, b: RolloutBatch) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.policy_fwd.train()
        if self.critic_fwd is not None:
            self.critic_fwd.train()
        n_local = b.response_ids.shape[0]
        mb_size = cfg.batch_size // ctx.world
        R = b.response_ids.shape[1]
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n_local, generator=self.gen)
            for mb_start in range(0, n_local, mb_size):
                mb = perm[mb_start:mb_start + mb_size].tolist()
                mb_tokens = float(b.response_mask[mb].sum())
                micro = micro_batches(mb, cfg.micro_batch_size)
                for j, mi in enumerate(micro):
                    sub = b.select(torch.tensor(mi))
                    ids = torch.cat([sub.query_ids, sub.response_ids], 1)
                    attn = torch.cat([sub.query_mask, sub.response_mask], 1)
                    mask = sub.response_mask.float()
                    last = j == len(micro) - 1
                    sync = nullcontext() if last else ctx.acc.no_sync(self.policy_fwd)
                    with sync, ctx.acc.autocast():
                        logits, head_values = self.policy_fwd(ids, attn, R)
                        values = self.critic_fwd(ids, attn, R) if self.critic_fwd is not None else head_values
                        new_logp = logprobs_from_logits(logits, sub.response_ids, cfg.temperature)
                        pg_loss, pg_stats = ppo_policy_loss(new_logp, sub.logprobs, sub.advantages, mask, cfg.clip_eps)
                        vf_loss, vf_stats = clipped_value_loss(values, sub.values, sub.returns, mask,
                                                               cfg.clip_eps_value)
                        # Token-weighted share of the minibatch, so micro-batches add up to its mean.
                        weight = float(mask.sum()) / max(mb_tokens, 1.0)
                        ctx.acc.backward((pg_loss + cfg.vf_coef * vf_loss) * weight)
                    with torch.no_grad():
                        ent = masked_mean(entropy_from_logits(logits.detach(), cfg.temperature), mask)
                    for k, v in {**pg_stats, **vf_stats, "policy/entropy": float(ent),
                                 "value/explained_variance": explained_variance(values.detach(), sub.returns, mask)
                                 }.items():
                        sums[k] = sums.get(k, 0.0) + (v if v == v else 0.0)
                    count += 1
                if cfg.max_grad_norm:
                    ctx.acc.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                            cfg.max_grad_norm)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
        return {k: v / max(count, 1) for k, v in sums.items()}


def run_ppo(cfg: PPOConfig, gold_fn: GoldFn | None = None) -> dict:
    return PPOTrainer(cfg, gold_fn).run()
