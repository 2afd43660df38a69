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

from dataclasses import dataclass
from typing import Literal

import torch

from prefloop.data import file_sha256
from prefloop.errors import ConfigError, require
from prefloop.models import (
    CriticForward,
    ResponseForward,
    ValueHead,
    load_causal_lm,
    load_tokenizer,
)
from prefloop.models.ensemble import load_reward_scorer, reward_members
from prefloop.models.lora import WithoutAdapter
from prefloop.rl import (
    AdaptiveKLController,
    FixedKLController,
    RolloutBatch,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_k3,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    token_rewards,
)
from prefloop.runtime.accel import frozen_dtype

from .common import CommonConfig, GoldFn, Timer, sampling_config
from .context import RunContext
from .memory import (
    LoraOptions,
    RolloutOptions,
    final_model,
    load_trained_lm,
    load_trained_reward_model,
    shares_reference,
)
from .options import PolicyOptions, RewardModelOptions, RLSamplingOptions, required
from .rl_common import (
    SHOW,
    RowLengths,
    add_stats,
    final_metrics,
    generator_states,
    global_mean,
    gold_mean,
    minibatches,
    prompt_indices,
    read_rl_prompts,
    restore_generators,
    rollout,
    rollout_metrics,
)


@dataclass(kw_only=True)
class PPOConfig(RLSamplingOptions, RewardModelOptions, PolicyOptions, CommonConfig, LoraOptions, RolloutOptions):
    reward: str | None = required()
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
    no_eos_penalty: float | None = -1.0
    """Score given to a response that never ends instead of the reward model's (None: keep it)."""
    kl_coef: float = 0.05
    """KL coefficient beta (>= 0; the initial value when adaptive)."""
    kl_target: float | None = None
    """Adaptive KL controller target in nats per sequence (None: fixed coefficient)."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in completions (>= 1): beta moves at most 20% * batch / horizon
    per update (Ziegler et al. 2019)."""
    keep_every: int = 0
    """Keep a copy of the policy every N updates in OUT/checkpoints/step-N (0: none), e.g. for
    `prefloop eval checkpoints` (gold and proxy reward against KL over the run)."""
    normalize_reward: bool = True
    """Gain and bias so that samples of the initial policy score mean 0 and std 1 (docs/ppo.md item 10)."""
    whiten_rewards: bool = False
    """Scale the per-token rewards (KL penalty + score) of each rollout batch to std 1, without shifting them,
    before GAE."""
    gamma: float = 1.0
    """Discount factor of the returns, in [0, 1]."""
    lam: float = 0.95
    """lambda of generalised advantage estimation, in [0, 1] (1: Monte Carlo returns, 0: one-step TD)."""
    clip_eps: float = 0.2
    """Clip range of the policy's probability ratio (> 0): the objective ignores ratios outside 1 +- clip-eps."""
    clip_eps_value: float = 0.2
    """Clip range of the value update (> 0): new values stay within +- this of the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the critic's value loss in the loss minimised (>= 0): policy loss + vf-coef * value loss."""
    critic_lr: float | None = None
    """Learning rate of the critic (default: --lr)."""
    lr: float = 1e-5
    adam_eps: float = 1e-5
    max_length: int = 256
    """Maximum prompt + response tokens; prompts are cut from the left to fit."""


def run_ppo(cfg: PPOConfig, gold_fn: GoldFn | None = None) -> dict:
    # -- set-up: options, prompts, models, optimizer, and the state a resume continues from
    require(cfg, "policy", "reward", "prompts")
    if cfg.rollout_batch_size % cfg.batch_size:
        raise ConfigError("--rollout-batch-size must be a multiple of --batch-size")
    ctx = RunContext("ppo", cfg)
    if cfg.rollout_batch_size % ctx.world:
        raise ConfigError("--rollout-batch-size must be divisible by the number of processes")
    tok = load_tokenizer(cfg.policy)
    prompt_texts, prompt_ids = read_rl_prompts(cfg, tok)
    sampling = sampling_config(cfg, tok)
    policy_fwd, critic_fwd, ref_fwd, rm = load_models(cfg, ctx, tok)
    state = ctx.resume_state()
    n_steps = cfg.max_steps * cfg.ppo_epochs * (cfg.rollout_batch_size // cfg.batch_size)
    opt, sched = ctx.optimizer(param_groups(cfg, policy_fwd, critic_fwd), n_steps, state)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target is not None \
        else FixedKLController(cfg.kl_coef)
    # One stream for the samples and the minibatch shuffles (on the CPU, whatever the device).
    shuffle_gen = sample_gen = torch.Generator().manual_seed(ctx.process_seed)
    reward_norm = (1.0, 0.0)  # gain and bias of the raw reward (docs/ppo.md item 10)
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
        restore_generators(state["generator"], ctx, shuffle_gen, sample_gen)
        reward_norm = tuple(state["reward_norm"])
    policy_fwd, critic_fwd, opt = prepare(ctx, policy_fwd, critic_fwd, opt)
    if cfg.normalize_reward and not state:
        first = [prompt_ids[i] for i in prompt_batch(cfg, ctx.rank, ctx.world, len(prompt_ids), 0)]
        reward_norm, _ = calibrate_reward(ctx, policy_fwd, rm, first, tok, sampling, sample_gen,
                                          cfg.rollout_micro_batch_size)
    timer = Timer()

    start = ctx.start(cfg.max_steps, state)
    for update in range(start, cfg.max_steps):
        idx = prompt_batch(cfg, ctx.rank, ctx.world, len(prompt_ids), update)
        # 1. rollout: one sample of each of this process's prompts
        with timer.phase("sample"):
            out = rollout(ctx, policy_fwd, [prompt_ids[i] for i in idx], tok, sampling, sample_gen,
                          cfg.rollout_micro_batch_size)
        # 2. score: the reward model (normalised; a fixed score without EOS), log-probs of policy and reference
        #    (the policy's recomputed by a training-style forward), values of the critic
        with timer.phase("score"):
            logp, ref_logp, values, raw = score_rollout(cfg, ctx, policy_fwd, critic_fwd, ref_fwd, rm, out)
            scores = raw * reward_norm[0] + reward_norm[1]
            if cfg.no_eos_penalty is not None:  # the "EOS trick" (docs/ppo.md item 4)
                scores = torch.where(out.ended.to(scores.device), scores, torch.full_like(scores, cfg.no_eos_penalty))
            # 3. advantages: per-token KL penalty + score at the last token, GAE, whitened over all processes
            mask = out.response_mask.float()
            rewards, kl = token_rewards(scores, logp, ref_logp, mask, kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False, distributed=True)
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask, distributed=True)
            batch = RolloutBatch(query_ids=out.query_ids, query_mask=out.query_mask, response_ids=out.response_ids,
                                 response_mask=out.response_mask, logprobs=logp, ref_logprobs=ref_logp,
                                 values=values, scores=scores, rewards=rewards, advantages=advantages,
                                 returns=returns)
        # 4. optimise: PPO epochs over shuffled minibatches, micro-batches accumulate gradients
        with timer.phase("update"):
            train_stats = optimise(cfg, ctx, policy_fwd, critic_fwd, opt, sched, batch, shuffle_gen)
        # 5. control, log, checkpoint: the KL coefficient follows the sequence KL (summed over tokens)
        kl_mean = global_mean(ctx, kl.sum(1), cfg.rollout_batch_size)
        kl_ctl.update(kl_mean, cfg.rollout_batch_size)
        metrics = rollout_metrics(ctx, cfg.rollout_batch_size, out, raw, scores)
        metrics.update(kl_metrics(ctx, cfg.rollout_batch_size, out, logp, ref_logp, kl, kl_ctl.value))
        metrics["rollout/reward_total"] = metrics["rollout/score_mean"] + metrics["rollout/kl_penalty"]
        if gold_fn is not None:
            metrics["gold/mean"] = gold_mean(ctx, cfg.rollout_batch_size, gold_fn, tok, out,
                                             [prompt_texts[i] for i in idx])
        metrics.update({"kl/k1": kl_mean, "kl/coef": kl_ctl.value, "lr": sched.get_last_lr()[0], **train_stats})
        metrics.update({f"time/{k}": v for k, v in timer.totals.items()})
        ctx.log(update + 1, metrics, show=SHOW)
        ctx.maybe_checkpoint(update + 1, cfg.max_steps, trained_models(ctx, policy_fwd, critic_fwd), tok, opt, sched,
                             lambda: {"kl_controller": kl_ctl.state_dict(), "reward_norm": list(reward_norm),
                                      "generator": generator_states(ctx, shuffle_gen, sample_gen)})
        if cfg.keep_every and (update + 1) % cfg.keep_every == 0 and update + 1 < cfg.max_steps:
            # A plain HF copy of the policy, for `prefloop eval checkpoints` (over-optimisation over the run).
            kept = ctx.out / "checkpoints" / f"step-{update + 1}"
            ctx.save_pretrained(ctx.acc.unwrap_model(policy_fwd).lm, kept, tok)

    extra = {"reward_norm": list(reward_norm)}
    policy, counts = final_model(ctx.acc.unwrap_model(policy_fwd).lm, cfg)
    meta = ctx.finish(policy, tok, {**final_metrics(ctx, timer), **counts},
                      {"prompts": file_sha256(cfg.prompts)}, extra=extra)
    save_critic(ctx, policy_fwd, critic_fwd)
    return meta


# -- set-up ---------------------------------------------------------------------------------------------

def load_models(cfg: PPOConfig, ctx: RunContext, tok):
    """The policy (trained; with a value head under --critic value-head), the critic (trained, initialised
    from the reward model under --critic reward, else None), the frozen reference and reward model."""
    policy = load_trained_lm(ctx, "policy", cfg.policy, tok, cfg)
    frozen = frozen_dtype(cfg.precision)
    if shares_reference(cfg):
        # A LoRA policy's reference: the same weights with the adapter disabled, no second copy.
        ref_fwd = WithoutAdapter(ResponseForward(policy))
    else:
        ref = load_causal_lm(cfg.reference or cfg.policy, tok, frozen, cfg.attn_implementation)
        ref_fwd = ctx.place_frozen(ResponseForward(ref.eval().requires_grad_(False)))
    rm = load_reward_scorer(cfg.reward, tok, cfg.ensemble_mode, cfg.ensemble_lambda, frozen)
    rm = ctx.place_frozen(rm)
    if cfg.critic == "reward":
        # An ensemble's first member initialises the critic.
        critic = load_trained_reward_model(ctx, "critic", reward_members(cfg.reward)[0], tok, cfg)
        return ResponseForward(policy), CriticForward(critic), ref_fwd, rm
    head = ValueHead(policy.config.get_text_config().hidden_size)
    if ctx.resuming:
        head.load_state_dict(torch.load(ctx.ckpt.dir / "value_head.pt", map_location="cpu"))
    return ResponseForward(policy, head), None, ref_fwd, rm


def param_groups(cfg: PPOConfig, policy_fwd, critic_fwd) -> list[dict]:
    """The policy (and value head) at --lr; a separate critic at --critic-lr."""
    groups = [{"params": list(policy_fwd.parameters()), "lr": cfg.lr}]
    if critic_fwd is not None:
        groups.append({"params": list(critic_fwd.parameters()), "lr": cfg.critic_lr or cfg.lr})
    return groups


def prepare(ctx: RunContext, policy_fwd, critic_fwd, opt):
    """The trained modules and the optimizer, wrapped for the accelerator (DDP across processes)."""
    if critic_fwd is None:
        policy_fwd, opt = ctx.prepare(policy_fwd, opt)
        return policy_fwd, None, opt
    return ctx.prepare(policy_fwd, critic_fwd, opt)


def prompt_batch(cfg: PPOConfig, rank: int, world: int, n_prompts: int, update: int) -> list[int]:
    """This process's prompts of an update (one sample each)."""
    per_rank = cfg.rollout_batch_size // world
    return prompt_indices(n_prompts, per_rank * world, update, rank * per_rank, per_rank, cfg.seed)


def calibrate_reward(ctx: RunContext, policy_fwd, rm, prompt_ids: list[list[int]], tok, sampling, generator,
                     micro_batch_size: int | None = None):
    """docs/ppo.md item 10: the gain and bias that give the initial policy's rewards mean 0 and std 1 over
    all processes, and the raw scores of this process's calibration samples."""
    out = rollout(ctx, policy_fwd, prompt_ids, tok, sampling, generator, micro_batch_size)
    with torch.no_grad():
        scores = rm(torch.cat([out.query_ids, out.response_ids], 1), torch.cat([out.query_mask, out.response_mask], 1))
    every = ctx.acc.gather(scores.to(ctx.device).float())
    mean, std = float(every.mean()), float(every.std().clamp(min=1e-6))
    return (1.0 / std, -mean / std), scores


# -- the steps of an update -----------------------------------------------------------------------------

@torch.no_grad()
def score_rollout(cfg: PPOConfig, ctx: RunContext, policy_fwd, critic_fwd, ref_fwd, rm, out):
    """Old log-probs, reference log-probs and values (B, R), 0 after the response, and raw scores (B,) of a
    sampled batch, a micro-batch of rows of similar length at a time, cropped to the columns its rows use
    (docs/ppo.md items 5, 8)."""
    pf, cf = ctx.acc.unwrap_model(policy_fwd), None if critic_fwd is None else ctx.acc.unwrap_model(critic_fwd)
    pf.eval()
    whole = RolloutBatch(query_ids=out.query_ids, query_mask=out.query_mask, response_ids=out.response_ids,
                         response_mask=out.response_mask)
    lengths, (B, R), T = RowLengths(out.query_mask, out.response_mask), out.response_ids.shape, cfg.temperature
    logp, ref_logp, values = (out.response_mask.new_zeros((B, R), dtype=torch.float32) for _ in range(3))
    scores = torch.zeros(B, device=out.response_ids.device)
    for rows in lengths.groups(ctx, range(B), cfg.micro_batch_size or cfg.batch_size):
        sub = whole.select(rows).crop(*lengths.columns(rows))
        ids, mask = torch.cat([sub.query_ids, sub.response_ids], 1), torch.cat([sub.query_mask, sub.response_mask], 1)
        r_ids, r = sub.response_ids, sub.response_ids.shape[1]
        at = torch.tensor(rows, device=scores.device)
        lp, _, v = pf(ids, mask, r_ids, T)
        logp[at, :r] = lp.float()
        ref_logp[at, :r] = ref_fwd(ids, mask, r_ids, T)[0].float()
        values[at, :r] = (cf(ids, mask, r) if cf is not None else v).float()
        scores[at] = rm(ids, mask).float()
    m = out.response_mask.float()
    return logp * m, ref_logp * m, values * m, scores


def optimise(cfg: PPOConfig, ctx: RunContext, policy_fwd, critic_fwd, opt, sched, b: RolloutBatch,
             generator) -> dict:
    """PPO epochs over shuffled minibatches of the rollout, one optimizer step each; micro-batches (rows of
    similar length, cropped to the columns they use) accumulate gradients. Returns the statistics of the
    minibatches (micro-batches weighted as their losses), averaged over the steps, and the mean gradient norm."""
    models = [policy_fwd] + ([critic_fwd] if critic_fwd is not None else [])
    for m in models:
        m.train()
    lengths = RowLengths(b.query_mask, b.response_mask)
    sums: dict[str, float] = {}
    norms: list[float] = []
    for mb in minibatches(b.response_ids.shape[0], cfg.batch_size // ctx.world, cfg.ppo_epochs, generator):
        mb_tokens = lengths.tokens(mb)
        for mi in ctx.accumulate(lengths.groups(ctx, mb, cfg.micro_batch_size), *models):
            sub = b.select(mi).crop(*lengths.columns(mi))
            ids = torch.cat([sub.query_ids, sub.response_ids], 1)
            attn = torch.cat([sub.query_mask, sub.response_mask], 1)
            mask = sub.response_mask.float()
            with ctx.acc.autocast():
                new_logp, entropy, head_values = policy_fwd(ids, attn, sub.response_ids, cfg.temperature,
                                                            entropy=True)
                values = critic_fwd(ids, attn, sub.response_ids.shape[1]) if critic_fwd is not None \
                    else head_values
                pg_loss, pg_stats = ppo_policy_loss(new_logp, sub.logprobs, sub.advantages, mask, cfg.clip_eps)
                vf_loss, vf_stats = clipped_value_loss(values, sub.values, sub.returns, mask, cfg.clip_eps_value)
                # Token-weighted share of the minibatch, so micro-batches add up to its mean.
                weight = lengths.tokens(mi) / max(mb_tokens, 1)
                ctx.acc.backward((pg_loss + cfg.vf_coef * vf_loss) * weight)
            with torch.no_grad():
                ent = masked_mean(entropy, mask)
            add_stats(sums, {**pg_stats, **vf_stats, "policy/entropy": float(ent),
                             "value/explained_variance": explained_variance(values.detach(), sub.returns, mask)},
                      weight)
        norms.append(ctx.step(opt, sched))
    return {**{k: v / max(len(norms), 1) for k, v in sums.items()}, "grad_norm": sum(norms) / max(len(norms), 1)}


def kl_metrics(ctx: RunContext, n: int, out, logp, ref_logp, kl, kl_coef: float) -> dict:
    """k3 KL to the reference, the KL penalty and total reward, and the gap between the sampler's
    log-probs and the training forward's (about 0: docs/ppo.md item 19)."""
    mask = out.response_mask.float()
    m = {"kl/k3": global_mean(ctx, (kl_k3(logp, ref_logp) * mask).sum(1), n),
         "rollout/kl_penalty": -kl_coef * global_mean(ctx, kl.sum(1), n),
         "rollout/logprob_gap": float(((out.logprobs - logp).abs() * mask).sum() / mask.sum().clamp(min=1))}
    return m


# -- what a checkpoint and the end of the run keep ------------------------------------------------------

def trained_models(ctx: RunContext, policy_fwd, critic_fwd) -> dict:
    pf = ctx.acc.unwrap_model(policy_fwd)
    if critic_fwd is not None:
        return {"policy": pf.lm, "critic": ctx.acc.unwrap_model(critic_fwd).critic}
    return {"policy": pf.lm, "value_head": pf.value_head}


def save_critic(ctx: RunContext, policy_fwd, critic_fwd) -> None:
    """OUT/critic (an HF reward-model directory) or OUT/value_head.pt, beside the policy in OUT/model (every
    process calls it: sharded weights are gathered)."""
    if critic_fwd is not None:
        ctx.save_pretrained(ctx.acc.unwrap_model(critic_fwd).critic, ctx.out / "critic")
    else:
        ctx.save_pretrained(ctx.acc.unwrap_model(policy_fwd).value_head, ctx.out / "value_head.pt")
