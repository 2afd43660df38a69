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
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from prefloop.data import file_sha256
from prefloop.errors import ConfigError, require
from prefloop.models import ResponseForward, load_causal_lm, load_tokenizer
from prefloop.models.lora import WithoutAdapter
from prefloop.rl import RolloutBatch, kl_k1, kl_k3, masked_mean, masked_sum
from prefloop.rl.group import (
    group_advantages,
    kl_penalised_scores,
    leave_one_out_advantages,
    pg_loss_sequence_mean,
    pg_loss_token_mean,
)
from prefloop.runtime.accel import frozen_dtype

from .common import (
    CommonConfig,
    GoldFn,
    Timer,
    decode_responses,
    sampling_config,
)
from .context import RunContext
from .memory import LoraOptions, RolloutOptions, final_model, load_trained_lm, shares_reference
from .options import PolicyOptions, RewardOptions, RLSamplingOptions
from .rewards import load_reward_source
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
from .sample import device_generator

AdvantageFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict]]


@dataclass(kw_only=True)
class GroupPGConfig(RLSamplingOptions, RewardOptions, PolicyOptions, CommonConfig, LoraOptions, RolloutOptions):
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


def run_group(cfg: GroupPGConfig, recipe: str, advantage_fn: AdvantageFn, gold_fn: GoldFn | None = None) -> dict:
    # -- set-up: options, the reward, prompts, models, optimizer, and the state a resume continues from
    require(cfg, "policy", "prompts")
    K = cfg.num_generations
    if K < 2:
        raise ConfigError(f"--num-generations must be at least 2 (a group baseline needs company), got {K}")
    if cfg.rollout_batch_size % cfg.batch_size:
        raise ConfigError("--rollout-batch-size must be a multiple of --batch-size")
    if cfg.epochs_per_rollout < 1:
        raise ConfigError("--epochs-per-rollout must be at least 1")
    # The run context first: its --out and --resume checks refuse before any model (the reward's too) loads.
    ctx = RunContext(recipe, cfg)
    if cfg.rollout_batch_size % (K * ctx.world) or cfg.batch_size % ctx.world:
        raise ConfigError("--rollout-batch-size must be a multiple of --num-generations times the number of "
                          "processes, and --batch-size a multiple of the number of processes")
    tok = load_tokenizer(cfg.policy)
    # Then the reward: a bad --reward-fn or prompt fails before the policy is loaded or a file written.
    reward = load_reward_source(cfg.reward, cfg.reward_fn, tok, cfg.ensemble_mode, cfg.ensemble_lambda)
    prompt_texts, prompt_ids = read_rl_prompts(cfg, tok)
    reward.check(prompt_texts, cfg.prompts)
    sampling = sampling_config(cfg, tok)
    reward.scorer = ctx.place_frozen(reward.scorer) if reward.scorer is not None else None
    policy_fwd, ref_fwd = load_models(cfg, ctx, tok)
    state = ctx.resume_state()
    n_steps = cfg.max_steps * cfg.epochs_per_rollout * (cfg.rollout_batch_size // cfg.batch_size)
    opt, sched = ctx.optimizer(policy_fwd.parameters(), n_steps, state)
    # Shuffles draw on the CPU; samples on the device the sampler runs on.
    shuffle_gen = torch.Generator().manual_seed(ctx.process_seed)
    sample_gen = device_generator(ctx.device, ctx.process_seed)
    if state:
        restore_generators(state["generator"], ctx, shuffle_gen, sample_gen)
    policy_fwd, opt = ctx.prepare(policy_fwd, opt)
    timer = Timer()

    start = ctx.start(cfg.max_steps, state)
    for update in range(start, cfg.max_steps):
        idx = prompt_batch(cfg, ctx.rank, ctx.world, len(prompt_ids), update)
        rows = [i for i in idx for _ in range(K)]
        # 1. rollout: the K samples of a prompt in consecutive rows (the groups of rl.group)
        with timer.phase("sample"):
            out = rollout(ctx, policy_fwd, [prompt_ids[i] for i in rows], tok, sampling, sample_gen,
                          cfg.rollout_micro_batch_size)
        # 2. score: the reward (a fixed score without EOS if asked), log-probs of the reference and, unless
        #    on-policy, of the policy that sampled
        with timer.phase("score"):
            responses = decode_responses(tok, out.response_ids, out.response_mask)
            raw = reward([prompt_texts[i] for i in rows], responses, out).to(ctx.device)
            scores = raw
            if cfg.no_eos_penalty is not None:
                scores = torch.where(out.ended, scores, torch.full_like(scores, cfg.no_eos_penalty))
            old_logp, ref_logp = score_rollout(cfg, ctx, policy_fwd, ref_fwd, out)
            # 3. advantages: KL folded into the score (optional), then the group baseline
            rewards = scores
            if cfg.kl_in_reward and ref_logp is not None:
                logp = old_logp if old_logp is not None else out.logprobs
                rewards, _ = kl_penalised_scores(scores, logp, ref_logp, out.response_mask, cfg.kl_coef)
            advantages, adv_stats = advantage_fn(rewards, K)
        # 4. optimise: epochs over shuffled minibatches, micro-batches accumulate gradients
        with timer.phase("update"):
            train_stats = optimise(cfg, ctx, policy_fwd, opt, sched, out, old_logp, ref_logp, advantages, shuffle_gen)
        # 5. log, checkpoint (the KL coefficient is fixed)
        metrics = rollout_metrics(ctx, cfg.rollout_batch_size, out, raw, scores)
        metrics.update(kl_metrics(cfg, ctx, cfg.rollout_batch_size, out, old_logp, ref_logp, rewards))
        if gold_fn is not None:
            metrics["gold/mean"] = gold_mean(ctx, cfg.rollout_batch_size, gold_fn, tok, out,
                                             [prompt_texts[i] for i in rows])
        metrics.update({**adv_stats, "kl/coef": cfg.kl_coef, "lr": sched.get_last_lr()[0], **train_stats})
        metrics.update({f"time/{k}": v for k, v in timer.totals.items()})
        ctx.log(update + 1, metrics, show=SHOW)
        ctx.maybe_checkpoint(update + 1, cfg.max_steps, {"policy": ctx.acc.unwrap_model(policy_fwd).lm}, tok, opt,
                             sched, lambda: {"generator": generator_states(ctx, shuffle_gen, sample_gen)})

    policy, counts = final_model(ctx.acc.unwrap_model(policy_fwd).lm, cfg)
    return ctx.finish(policy, tok, {**final_metrics(ctx, timer), **counts},
                      {"prompts": file_sha256(cfg.prompts)}, extra={"reward": reward.name})


def run_grpo(cfg: GRPOConfig, gold_fn: GoldFn | None = None) -> dict:
    """GRPO: group-relative advantages (Shao et al. 2024), or only mean-centred with --no-scale-rewards."""
    return run_group(cfg, "grpo", partial(group_advantages, scale_by_std=cfg.scale_rewards), gold_fn)


def run_rloo(cfg: RLOOConfig, gold_fn: GoldFn | None = None) -> dict:
    """RLOO: leave-one-out baselines (Kool et al. 2019; Ahmadian et al. 2024)."""
    return run_group(cfg, "rloo", leave_one_out_advantages, gold_fn)


# -- set-up ---------------------------------------------------------------------------------------------

def load_models(cfg: GroupPGConfig, ctx: RunContext, tok):
    """The policy (trained) and the frozen reference (None when --kl-coef is 0: no KL, nothing to load)."""
    policy = load_trained_lm(ctx, "policy", cfg.policy, tok, cfg)
    if cfg.kl_coef <= 0:
        return ResponseForward(policy), None
    if shares_reference(cfg):
        # A LoRA policy's reference: the same weights with the adapter disabled, no second copy.
        return ResponseForward(policy), WithoutAdapter(ResponseForward(policy))
    ref = load_causal_lm(cfg.reference or cfg.policy, tok, frozen_dtype(cfg.precision), cfg.attn_implementation)
    ref.eval().requires_grad_(False)
    return ResponseForward(policy), ctx.place_frozen(ResponseForward(ref))


def on_policy(cfg: GroupPGConfig) -> bool:
    """One epoch over one minibatch: the sampling policy is the policy being differentiated, so its log-probs
    need no separate forward (ratio exactly 1: REINFORCE)."""
    return cfg.epochs_per_rollout == 1 and cfg.batch_size == cfg.rollout_batch_size


def prompt_batch(cfg: GroupPGConfig, rank: int, world: int, n_prompts: int, update: int) -> list[int]:
    """This process's prompts of an update (each is sampled K times)."""
    per_rank = cfg.rollout_batch_size // cfg.num_generations // world
    return prompt_indices(n_prompts, per_rank * world, update, rank * per_rank, per_rank, cfg.seed)


# -- the steps of an update -----------------------------------------------------------------------------

@torch.no_grad()
def score_rollout(cfg: GroupPGConfig, ctx: RunContext, policy_fwd, ref_fwd, out):
    """Old log-probs (None on-policy) and reference log-probs (None without KL), (B, R) and 0 after the
    response, a micro-batch of rows of similar length at a time, cropped to the columns its rows use
    (docs/ppo.md item 5)."""
    whole = _as_batch(out)
    lengths, (B, R) = RowLengths(out.query_mask, out.response_mask), out.response_ids.shape
    groups = lengths.groups(ctx, range(B), cfg.micro_batch_size or cfg.batch_size)

    def logprobs(fwd):
        full = torch.zeros((B, R), device=out.response_ids.device)
        for rows in groups:
            sub = whole.select(rows).crop(*lengths.columns(rows))
            ids, mask = torch.cat([sub.query_ids, sub.response_ids], 1), \
                torch.cat([sub.query_mask, sub.response_mask], 1)
            full[torch.tensor(rows, device=full.device), :sub.response_ids.shape[1]] = \
                fwd(ids, mask, sub.response_ids, cfg.temperature)[0].float()
        return full * out.response_mask.float()

    old_logp = ref_logp = None
    if not on_policy(cfg):
        pf = ctx.acc.unwrap_model(policy_fwd)
        pf.eval()
        old_logp = logprobs(pf)
    if ref_fwd is not None:
        ref_logp = logprobs(ref_fwd)
    return old_logp, ref_logp


def _as_batch(out, old_logp=None, ref_logp=None) -> RolloutBatch:
    """A sampled rollout as a RolloutBatch (for `select` and `crop`); `logprobs` are the old log-probs of a
    separate forward when there are some, else the sampler's own."""
    return RolloutBatch(query_ids=out.query_ids, query_mask=out.query_mask, response_ids=out.response_ids,
                        response_mask=out.response_mask, logprobs=out.logprobs if old_logp is None else old_logp,
                        ref_logprobs=ref_logp)


def optimise(cfg: GroupPGConfig, ctx: RunContext, policy_fwd, opt, sched, out, old_logp, ref_logp, advantages,
             generator) -> dict:
    """The clipped surrogate (plus a k3 KL term unless KL is in the reward) over epochs of shuffled
    minibatches, one optimizer step each; micro-batches (rows of similar length, cropped to the columns they
    use) accumulate gradients. Returns the statistics of the minibatches (micro-batches weighted as their
    losses), averaged over the steps, and the mean gradient norm."""
    policy_fwd.train()
    whole, lengths = _as_batch(out, old_logp, ref_logp), RowLengths(out.query_mask, out.response_mask)
    loss_fn = pg_loss_token_mean if cfg.loss_aggregation == "token" else pg_loss_sequence_mean
    kl_loss_coef = 0.0 if cfg.kl_in_reward else cfg.kl_coef
    sums: dict[str, float] = {}
    norms: list[float] = []
    for mb in minibatches(out.response_ids.shape[0], cfg.batch_size // ctx.world, cfg.epochs_per_rollout, generator):
        mb_tokens = lengths.tokens(mb)
        for mi in ctx.accumulate(lengths.groups(ctx, mb, cfg.micro_batch_size), policy_fwd):
            sub = whole.select(mi).crop(*lengths.columns(mi))
            ids = torch.cat([sub.query_ids, sub.response_ids], 1)
            attn = torch.cat([sub.query_mask, sub.response_mask], 1)
            mask = sub.response_mask.float()
            with ctx.acc.autocast():
                new_logp, entropy, _ = policy_fwd(ids, attn, sub.response_ids, cfg.temperature, entropy=True)
                loss, stats = loss_fn(new_logp, None if old_logp is None else sub.logprobs, advantages[mi], mask,
                                      cfg.clip_eps, sub.ref_logprobs, kl_loss_coef)
                # Each micro-batch's share of the minibatch mean: tokens (token mean) or rows.
                share = lengths.tokens(mi) / max(mb_tokens, 1) if cfg.loss_aggregation == "token" \
                    else len(mi) / len(mb)
                ctx.acc.backward(loss * share)
            with torch.no_grad():
                stats["policy/entropy"] = float(masked_mean(entropy, mask))
                if on_policy(cfg):  # the sampler's log-probs against the training forward's
                    stats["rollout/logprob_gap"] = float(masked_mean((new_logp.detach() - sub.logprobs).abs(), mask))
            add_stats(sums, stats, share)
        norms.append(ctx.step(opt, sched))
    return {**{k: v / max(len(norms), 1) for k, v in sums.items()}, "grad_norm": sum(norms) / max(len(norms), 1)}


def kl_metrics(cfg: GroupPGConfig, ctx: RunContext, n: int, out, old_logp, ref_logp, rewards) -> dict:
    """KL to the reference (k1, k3 per sequence), the KL penalty and total reward, and the gap between the
    sampler's log-probs and those of a separate forward (about 0: docs/ppo.md item 19)."""
    mask = out.response_mask
    m = {"rollout/reward_total": global_mean(ctx, rewards, n)}
    logp = old_logp if old_logp is not None else out.logprobs
    if old_logp is not None:
        m["rollout/logprob_gap"] = float(masked_mean((old_logp - out.logprobs).abs(), mask))
    if ref_logp is not None:
        m["kl/k1"] = global_mean(ctx, masked_sum(kl_k1(logp, ref_logp), mask, dim=1), n)
        m["kl/k3"] = global_mean(ctx, masked_sum(kl_k3(logp, ref_logp), mask, dim=1), n)
        if cfg.kl_in_reward:
            m["rollout/kl_penalty"] = -cfg.kl_coef * m["kl/k1"]
    return m
