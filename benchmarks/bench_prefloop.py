"""The prefloop side: run_sft, run_reward, run_dpo, PPO, GRPO and RLOO on the shared setup, timed from
metrics.jsonl.

Each step's time is the difference of the cumulative `time` column that prefloop logs after every step
(log_every=1), so it covers everything the loop does per step: collation, forward, backward, optimizer,
metric reduction and logging. Token counts per step come from the same batch plan the recipe uses.
DPO's reference log-probs are precomputed before the first step (prefloop's default); that pass is timed
separately and its time is spread over the steps (each step's share of the pairs it covered).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from bench_common import Shape, dpo_flops, rl_flops_group, rl_flops_ppo, train_flops


def _step_times(out: Path) -> tuple[list[float], list[dict]]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "time" in r and isinstance(r.get("step"), int)]
    times, prev = [], 0.0
    for r in rows:
        times.append(r["time"] - prev)
        prev = r["time"]
    return times, rows


# Set by the worker from the run's spec: "fp32" for the CPU comparison, "bf16" on a GPU (benchmarks/gpu/);
# OVERRIDES adds recipe options to every run (e.g. LoRA settings where the recipes have them).
PRECISION = "fp32"
OVERRIDES: dict = {}


def _common(shape: Shape, out: Path) -> dict:
    return dict(out=out, seed=0, max_steps=shape.steps, batch_size=shape.batch, max_length=shape.max_length,
                precision=PRECISION, log_every=1, save_every=0, **OVERRIDES)


def batches(task: str, setup: Path, shape: Shape) -> list[list[tuple[int, ...]]]:
    """The batches prefloop's recipe draws for `task` (sft or reward), step by step: for each step, one
    (row index, token lengths...) tuple per example, rows numbered as in the setup's JSONL file. Uses the
    same encoding and `BatchPlan` (length-grouped, seeded) as run_sft / run_reward, so the TRL side can be
    fed exactly the same batches in the same order."""
    from prefloop.data import encode_pair, read_comparisons
    from prefloop.models import load_tokenizer
    from prefloop.recipes.common import BatchPlan
    from prefloop.recipes.sft import encode_demonstrations

    if task == "sft":
        tok = load_tokenizer(str(setup / "lm"))
        lens = [(len(e.input_ids),) for e in encode_demonstrations(tok, setup / "sft.jsonl", shape.max_length)]
        plan = BatchPlan([n[0] for n in lens], shape.batch, 0)
    elif task == "dpo":
        return _dpo_batches(setup / "lm", dpo_data(setup, shape), shape)
    else:
        tok = load_tokenizer(str(setup / "rm"))
        enc = [encode_pair(tok, c, shape.max_length) for c in read_comparisons(setup / "pairs.jsonl")]
        lens = [(len(a), len(b)) for a, b in enc]
        plan = BatchPlan([max(n) for n in lens], shape.batch, 0)
    return [[(i, *lens[i]) for i in plan.batch(s)] for s in range(shape.steps)]


def _dpo_batches(model: Path, data: Path, shape: Shape) -> list[list[tuple[int, ...]]]:
    """run_dpo's batches over `data` (its encoding and BatchPlan): (row, chosen length, rejected length)."""
    from prefloop.data import read_comparisons
    from prefloop.data.encode_more import encode_pair_with_prompt
    from prefloop.models import load_tokenizer
    from prefloop.recipes.common import BatchPlan

    tok = load_tokenizer(str(model))
    enc = [encode_pair_with_prompt(tok, c, shape.max_length) for c in read_comparisons(data)]
    lens = [(len(p.chosen), len(p.rejected)) for p in enc]
    plan = BatchPlan([max(n) for n in lens], shape.batch, 0)
    return [[(i, *lens[i]) for i in plan.batch(s)] for s in range(shape.steps)]


def dpo_data(setup: Path, shape: Shape) -> Path:
    """The pairs a DPO run of `shape` trains on: those of the first `steps` batches of run_dpo's plan over all
    of pairs.jsonl, written once as dpo-STEPSxBATCH.jsonl. Training on exactly these pairs makes the
    reference precomputation cover the trained pairs and nothing else, so its time counts fully."""
    path = setup / f"dpo-{shape.steps}x{shape.batch}.jsonl"
    if not path.exists():
        lines = [ln for ln in (setup / "pairs.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
        order = _dpo_batches(setup / "lm", setup / "pairs.jsonl", shape)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines[x[0]] + "\n" for batch in order for x in batch), encoding="utf-8")
        tmp.replace(path)
    return path


def token_counts(task: str, setup: Path, shape: Shape) -> tuple[list[int], list[int]]:
    """(real tokens, padded tokens) per step of the shared batch order."""
    tokens, padded = [], []
    for b in batches(task, setup, shape):
        tokens.append(sum(sum(x[1:]) for x in b))
        padded.append(max(max(x[1:]) for x in b) * len(b) * (len(b[0]) - 1))
    return tokens, padded


def _rl_split(rows: list[dict]) -> list[dict]:
    """Per-update sample / score / update seconds from the cumulative time/* columns."""
    split, prev = [], {"sample": 0.0, "score": 0.0, "update": 0.0}
    for r in rows:
        cur = {k: r.get(f"time/{k}", 0.0) or 0.0 for k in prev}
        split.append({k: cur[k] - prev[k] for k in prev})
        prev = cur
    return split


def rl_prompt_order(setup: Path, shape: Shape) -> list[int]:
    """Rows of prompts.jsonl that GRPO / RLOO sample from, update by update (each K times), as the trainer
    draws them (`prompt_indices`, seed 0, one process): TRL gets them in this order, unshuffled."""
    from prefloop.data import read_prompts
    from prefloop.recipes.rl_common import prompt_indices

    n = len(read_prompts(setup / "prompts.jsonl"))
    per_update = shape.batch // shape.samples_per_prompt
    return [i for u in range(shape.steps) for i in prompt_indices(n, per_update, u, 0, per_update, 0)]


def rl_token_counts(setup: Path, shape: Shape) -> list[int]:
    """Real prompt + response tokens per GRPO / RLOO update: K copies of each prompt (encoded as the trainer
    does; every prompt fits, none is cut) plus batch x new_tokens sampled tokens."""
    from prefloop.data import encode_prompt, read_prompts, render_prompt
    from prefloop.models import load_tokenizer

    tok = load_tokenizer(str(setup / "lm"))
    prompts = read_prompts(setup / "prompts.jsonl")
    rows = rl_prompt_order(setup, shape)
    per_update = shape.batch // shape.samples_per_prompt
    out = []
    for u in range(shape.steps):
        lens = [len(encode_prompt(tok, render_prompt(tok, prompts[i].prompt))) for i in
                rows[u * per_update:(u + 1) * per_update]]
        out.append(shape.samples_per_prompt * sum(lens) + shape.batch * shape.new_tokens)
    return out


def run_sft(setup: Path, out: Path, shape: Shape, info: dict) -> dict:
    from prefloop.recipes.sft import SFTConfig
    from prefloop.recipes.sft import run_sft as prefloop_sft

    cfg = SFTConfig(model=str(setup / "lm"), data=setup / "sft.jsonl", **_common(shape, out))
    prefloop_sft(cfg)
    times, _ = _step_times(out)
    tokens, padded = token_counts("sft", setup, shape)
    n = info["matmul_params_lm"]
    return {"step_times": times, "samples": [shape.batch] * shape.steps, "tokens": tokens, "padded_tokens": padded,
            "flops": [train_flops(n, t) for t in tokens]}


def run_reward(setup: Path, out: Path, shape: Shape, info: dict) -> dict:
    from prefloop.recipes.reward import RewardConfig
    from prefloop.recipes.reward import run_reward as prefloop_reward

    # eval_fraction=0: every pair trains and no held-out evaluation runs after the loop
    cfg = RewardConfig(model=str(setup / "rm"), data=setup / "pairs.jsonl", eval_fraction=0.0, **_common(shape, out))
    prefloop_reward(cfg)
    times, _ = _step_times(out)
    tokens, padded = token_counts("reward", setup, shape)
    n = info["matmul_params_rm"]
    return {"step_times": times, "samples": [shape.batch] * shape.steps, "tokens": tokens, "padded_tokens": padded,
            "flops": [train_flops(n, t) for t in tokens]}


def run_ppo(setup: Path, out: Path, shape: Shape, info: dict) -> dict:
    from prefloop.models import load_tokenizer
    from prefloop.recipes import ppo
    from prefloop.recipes.rl_common import read_rl_prompts

    # Fixed length (--no-stop-at-eos): every completion has exactly new_tokens tokens, like TRL's side with
    # min_new_tokens; no response ever ends, so the no-EOS penalty is off (it would replace every score).
    cfg = ppo.PPOConfig(policy=str(setup / "lm"), reward=str(setup / "rm"), prompts=setup / "prompts.jsonl",
                    critic="reward", rollout_batch_size=shape.batch, ppo_epochs=4, max_new_tokens=shape.new_tokens,
                    stop_at_eos=False, no_eos_penalty=None, temperature=1.0, **_common(shape, out))
    ppo.run_ppo(cfg)
    times, rows = _step_times(out)
    split = _rl_split(rows)
    # prompt tokens of each update: the recipe's own prompt order (prompts were filtered to fit, none is cut)
    _, prompt_ids = read_rl_prompts(cfg, load_tokenizer(cfg.policy))
    tokens = []
    for u in range(shape.steps):
        prompt = sum(len(prompt_ids[i]) for i in ppo.prompt_batch(cfg, 0, 1, len(prompt_ids), u))
        tokens.append(prompt + shape.batch * shape.new_tokens)
    lengths = [r.get("rollout/response_length") for r in rows]
    flops = [rl_flops_ppo(info["matmul_params_lm"], info["matmul_params_rm"], t, cfg.ppo_epochs) for t in tokens]
    return {"step_times": times, "samples": [shape.batch] * shape.steps, "tokens": tokens, "flops": flops,
            "split": split, "response_length": lengths,
            "generated_tokens": [shape.batch * shape.new_tokens] * shape.steps}


def run_dpo(setup: Path, out: Path, shape: Shape, info: dict) -> dict:
    """run_dpo with the sigmoid loss, beta 0.1, reference = the initial policy, its log-probs precomputed
    (the default). The precomputation runs before the first logged step; it is timed by wrapping the
    recipe's `pair_logprobs` (nothing else is called through it with eval_fraction=0) and added to the steps
    in proportion to their pairs, so the step times cover the reference's work as TRL's do."""
    from prefloop.recipes import dpo

    data = dpo_data(setup, shape)
    spent = [0.0]
    original = dpo.pair_logprobs

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    cfg = dpo.DPOConfig(model=str(setup / "lm"), data=data, eval_fraction=0.0, loss="sigmoid", beta=0.1,
                        precompute_reference=True, **_common(shape, out))
    dpo.pair_logprobs = timed
    try:
        dpo.run_dpo(cfg)
    finally:
        dpo.pair_logprobs = original
    train_times, _ = _step_times(out)
    order = batches("dpo", setup, shape)
    total_pairs = sum(len(b) for b in order)
    times = [t + spent[0] * len(b) / total_pairs for t, b in zip(train_times, order)]
    tokens, padded = token_counts("dpo", setup, shape)
    n = info["matmul_params_lm"]
    return {"step_times": times, "train_step_times": train_times, "reference_s": spent[0],
            "samples": [shape.batch] * shape.steps, "tokens": tokens, "padded_tokens": padded,
            "flops": [dpo_flops(n, t) for t in tokens]}


def group_config(task: str, setup: Path, out: Path, shape: Shape):
    """GRPOConfig / RLOOConfig matched to TRL's GRPOTrainer / RLOOTrainer defaults (benchmarks/README.md):
    K samples of batch / K prompts, exactly new_tokens tokens each, one optimizer step per rollout (on-policy),
    lr 1e-6; GRPO: no KL (TRL's beta 0), std-scaled group advantages, token mean over the batch (TRL's
    "dapo"); RLOO: k1 KL in the reward with beta 0.05, leave-one-out baseline, mean over sequences."""
    from prefloop.recipes.grpo import GRPOConfig, RLOOConfig

    common = _common(shape, out)
    common.update(policy=str(setup / "lm"), reward=str(setup / "rm"), prompts=setup / "prompts.jsonl",
                  num_generations=shape.samples_per_prompt, rollout_batch_size=shape.batch, epochs_per_rollout=1,
                  max_new_tokens=shape.new_tokens, stop_at_eos=False, no_eos_penalty=None, temperature=1.0,
                  top_k=0, top_p=1.0, lr=1e-6)
    if task == "grpo":
        return GRPOConfig(kl_coef=0.0, scale_rewards=True, loss_aggregation="token", **common)
    return RLOOConfig(kl_coef=0.05, kl_in_reward=True, loss_aggregation="sequence", **common)


def _run_group(task: str, setup: Path, out: Path, shape: Shape, info: dict) -> dict:
    from prefloop.models import load_tokenizer
    from prefloop.recipes import grpo
    from prefloop.recipes.rl_common import read_rl_prompts

    cfg = group_config(task, setup, out, shape)
    (grpo.run_grpo if task == "grpo" else grpo.run_rloo)(cfg)
    times, rows = _step_times(out)
    K = cfg.num_generations
    _, prompt_ids = read_rl_prompts(cfg, load_tokenizer(cfg.policy))

    def batch(u):
        return grpo.prompt_batch(cfg, 0, 1, len(prompt_ids), u)

    tokens = [K * sum(len(prompt_ids[i]) for i in batch(u)) + shape.batch * shape.new_tokens
              for u in range(shape.steps)]
    flops = [rl_flops_group(info["matmul_params_lm"], info["matmul_params_rm"], t, ref=cfg.kl_coef > 0,
                            old=not grpo.on_policy(cfg)) for t in tokens]
    return {"step_times": times, "samples": [shape.batch] * shape.steps, "tokens": tokens, "flops": flops,
            "split": _rl_split(rows), "response_length": [r.get("rollout/response_length") for r in rows],
            "generated_tokens": [shape.batch * shape.new_tokens] * shape.steps,
            "same_prompts": [i for u in range(shape.steps) for i in batch(u)]
            == rl_prompt_order(setup, shape)}


RUNNERS = {"sft": run_sft, "reward": run_reward, "dpo": run_dpo, "ppo": run_ppo,
           "grpo": partial(_run_group, "grpo"), "rloo": partial(_run_group, "rloo")}
