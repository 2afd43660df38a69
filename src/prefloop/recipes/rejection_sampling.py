"""Rejection-sampling fine-tuning: rounds of best-of-n sampling under a reward, then SFT on the winners
(Touvron et al. 2023, Llama 2, section 3.2.3; Dong et al. 2023, RAFT; the "expert iteration" of Anthony et al.
2017). Each round starts from the policy the previous one trained.

One round, top to bottom (OUT/round_<r>/):
  1. sample   N completions of each prompt of the round from the current policy (our KV-cache sampler)
  2. score    under the reward model or scoring function; keep the top-scored one per prompt
              -> samples.jsonl (all N with scores), best.jsonl (the winners as demonstrations)
  3. train    the SFT recipe on best.jsonl, starting from the current policy -> sft/model
  4. record   round.json: mean best-of-n score, mean score of all samples (the policy before the round)
Afterwards the final policy is sampled on round 1's prompts with round 1's seed, so its mean score compares
directly with the starting policy's; summary.json holds every round and OUT/model the final policy.
`--resume` skips the rounds that wrote round.json (and resumes an interrupted SFT from its checkpoint); it is
refused, before any model loads, when OUT/run.json records other options or inputs (--rounds may change).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from prefloop.data import file_sha256, read_prompts, render_prompt, write_jsonl
from prefloop.errors import ConfigError, require
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.models.precision import checkpoint_dtype
from prefloop.rollout import SamplingConfig
from prefloop.runtime import console, make_accelerator, process_seed, run_meta, save_hf, seed_everything, write_json
from prefloop.runtime.distributed import rank_and_world
from prefloop.runtime.seeding import EPOCH_SEED_STRIDE, PROMPT_ORDER_STRIDE

from .common import CommonConfig, output_dir
from .context import resume_differences, run_record
from .memory import LoraOptions
from .options import PolicyOptions, RewardOptions, SamplingOptions
from .rewards import RewardSource, load_reward_source
from .sample import device_generator, sample_and_score
from .sft import SFTConfig, run_sft


@dataclass(kw_only=True)
class RejectionSamplingConfig(SamplingOptions, RewardOptions, PolicyOptions, CommonConfig, LoraOptions):
    """Round 1 samples from --policy; the reward model (or --reward-fn) picks each prompt's best sample."""

    rounds: int = 3
    """Rounds of sample -> keep the best -> SFT."""
    num_samples: int = 8
    """Samples per prompt (N of best-of-n)."""
    prompts_per_round: int | None = None
    """Prompts per round, a fresh seeded draw each round (default: every prompt, every round)."""
    sample_batch_size: int = 64
    """Sequences sampled together."""
    epochs: float = 1.0
    """SFT passes over each round's winners (when --max-steps is not given; --max-steps is per round)."""
    lr: float = 1e-5
    warmup_ratio: float = 0.05


def _round_prompts(cfg: RejectionSamplingConfig, n: int, r: int) -> list[int]:
    if not cfg.prompts_per_round or cfg.prompts_per_round >= n:
        return list(range(n))
    return sorted(random.Random(cfg.seed * EPOCH_SEED_STRIDE + r).sample(range(n), cfg.prompts_per_round))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _sample_policy(cfg, policy_dir: str, texts: list[str], reward: RewardSource, seed: int, device):
    """N scored samples per prompt from the policy in `policy_dir`; with several processes each samples its
    share of the prompts (its own random stream) and all of them get every prompt's samples."""
    tok = load_tokenizer(policy_dir)
    model = load_causal_lm(policy_dir, tok, attn_implementation=cfg.attn_implementation).to(device)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gen = device_generator(device, process_seed(seed, rank_and_world()[0]))
    max_prompt = max(1, cfg.max_length - cfg.max_new_tokens)
    return sample_and_score(model, tok, texts, cfg.num_samples, scfg, cfg.sample_batch_size, gen, max_prompt,
                            device, reward=reward, progress=True, distributed=True)


def _sft_config(cfg: RejectionSamplingConfig, policy: str, data: Path, out: Path, r: int) -> SFTConfig:
    return SFTConfig(model=policy, data=data, out=out, epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.lr,
                     batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, max_length=cfg.max_length,
                     warmup_ratio=cfg.warmup_ratio, schedule=cfg.schedule, weight_decay=cfg.weight_decay,
                     adam_eps=cfg.adam_eps, max_grad_norm=cfg.max_grad_norm, precision=cfg.precision, dtype=cfg.dtype,
                     save_every=cfg.save_every, log_every=cfg.log_every, resume=cfg.resume, seed=cfg.seed + r,
                     # With LoRA each round's policy is saved merged: the next round samples and trains from it.
                     lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                     lora_target_modules=cfg.lora_target_modules, merge_lora=bool(cfg.lora_r),
                     gradient_checkpointing=cfg.gradient_checkpointing, attn_implementation=cfg.attn_implementation,
                     report_to=cfg.report_to, overwrite=cfg.overwrite)


def run_round(cfg: RejectionSamplingConfig, r: int, policy: str, prompts, texts: list[str], reward: RewardSource,
              acc) -> dict:
    """One round: sample N per prompt, keep the best, SFT on the winners. Returns the round's record."""
    d = Path(cfg.out) / f"round_{r}"
    idx = _round_prompts(cfg, len(texts), r)
    # 1-2. sample and score; the winners become demonstrations
    s = _sample_policy(cfg, policy, [texts[i] for i in idx], reward, cfg.seed * PROMPT_ORDER_STRIDE + r, acc.device)
    best = s.best()
    main = acc.is_main_process  # every process holds all samples; one writes them
    if main:
        write_jsonl(d / "samples.jsonl", [
            {"prompt": prompts[i].prompt, "responses": s.responses[k], "scores": s.scores[k], "ended": s.ended[k],
             "best_index": b} for k, (i, b) in enumerate(zip(idx, best))])
    # An empty winner (EOS at once) or one holding a NUL is no demonstration the SFT reader accepts; it is
    # left out and counted.
    demos = [{"prompt": prompts[i].prompt, "completion": s.responses[k][b]}
             for k, (i, b) in enumerate(zip(idx, best)) if s.responses[k][b].strip()]
    nul = sum("\x00" in d["completion"] for d in demos)
    demos = [d for d in demos if "\x00" not in d["completion"]]
    if not demos:
        raise ConfigError(f"round {r}: every prompt's best sample is empty or holds a NUL; nothing to fine-tune on")
    if main:
        write_jsonl(d / "best.jsonl", demos)
    acc.wait_for_everyone()
    # 3. SFT on the winners, starting from the current policy
    run_sft(_sft_config(cfg, policy, d / "best.jsonl", d / "sft", r))
    # 4. record
    record = {"round": r, "policy_in": policy, "policy_out": str(d / "sft" / "model"), "prompts": len(idx),
              "empty_winners_dropped": len(idx) - len(demos) - nul, "nul_winners_dropped": nul,
              "best_of_n_mean": _mean(row[b] for row, b in zip(s.scores, best)),
              "sample_mean": _mean(x for row in s.scores for x in row),
              "best_response_tokens": _mean(row[b] for row, b in zip(s.lengths, best))}
    if main:
        write_json(d / "round.json", record)
    acc.wait_for_everyone()
    return record


RUN_FILE = "run.json"


def resume_guard(cfg: RejectionSamplingConfig, world: int) -> dict:
    """What the run computes (`run_record`; --rounds may change: a resume runs the rounds not yet done). With
    --resume, refused when OUT/run.json records other options or inputs."""
    record = run_record(cfg, world)
    record["options"].pop("rounds", None)
    path = Path(cfg.out) / RUN_FILE
    if cfg.resume and path.is_file():
        diff = resume_differences(json.loads(path.read_text()), record)
        if diff:
            raise ConfigError(f"--resume: {cfg.out} was written by a run with other options: {'; '.join(diff)}. "
                              "Resume with the same options, or start a new run in another --out")
    return record


def run_rejection_sampling(cfg: RejectionSamplingConfig) -> dict:
    require(cfg, "policy", "prompts")
    output_dir(cfg, "rejection-sampling")
    if cfg.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {cfg.rounds}")
    if cfg.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {cfg.num_samples}")
    acc = make_accelerator(cfg.precision)
    run = resume_guard(cfg, acc.num_processes)  # before any model, the reward's included, loads
    seed_everything(cfg.seed, acc.process_index)
    tok = load_tokenizer(cfg.policy)
    reward = load_reward_source(cfg.reward, cfg.reward_fn, tok, cfg.ensemble_mode, cfg.ensemble_lambda)
    prompts = read_prompts(cfg.prompts)
    texts = [render_prompt(tok, p.prompt) for p in prompts]
    reward.check(texts, cfg.prompts)
    reward.to(acc.device)
    out = Path(cfg.out)

    rounds, policy = [], str(cfg.policy)
    for r in range(1, cfg.rounds + 1):
        done = out / f"round_{r}" / "round.json"
        if cfg.resume and done.exists():
            record = json.loads(done.read_text())
            console.print(f"round {r}: done before, policy {record['policy_out']}")
        else:
            console.print(f"[bold]rejection sampling[/]: round {r} of {cfg.rounds}, from {policy}")
            record = run_round(cfg, r, policy, prompts, texts, reward, acc)
            if acc.is_main_process:  # a round is done: record what the run computes, for a later --resume
                write_json(out / RUN_FILE, run)
        rounds.append(record)
        policy = record["policy_out"]

    # The final policy on round 1's prompts and seed: directly comparable with round 1's sample_mean.
    idx = _round_prompts(cfg, len(texts), 1)
    final = _sample_policy(cfg, policy, [texts[i] for i in idx], reward, cfg.seed * PROMPT_ORDER_STRIDE + 1, acc.device)
    summary = {"rounds": rounds, "reward": reward.name,
               "final": {"policy": str(out / "model"), "trained_in": policy,
                         "sample_mean": _mean(x for row in final.scores for x in row),
                         "best_of_n_mean": _mean(max(row) for row in final.scores)}}
    meta = run_meta("rejection-sampling", cfg, {"prompts": file_sha256(cfg.prompts)}, summary)
    if acc.is_main_process:
        final_tok = load_tokenizer(policy)
        # The last round's model as it was saved (in --dtype), not widened to fp32.
        save_hf(load_causal_lm(policy, final_tok, checkpoint_dtype(policy)), final_tok, out / "model", meta)
        write_json(out / "summary.json", summary)
        write_json(out / "prefloop.json", meta)
    acc.wait_for_everyone()
    return meta
