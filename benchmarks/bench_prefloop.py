"""The prefloop side: run_sft, run_reward and PPO on the shared setup, timed from metrics.jsonl.

Each step's time is the difference of the cumulative `time` column that prefloop logs after every step
(log_every=1), so it covers everything the loop does per step: collation, forward, backward, optimizer,
metric reduction and logging. Token counts per step come from the same batch plan the recipe uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_common import Shape, rl_flops_ppo, train_flops


def _step_times(out: Path) -> tuple[list[float], list[dict]]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "time" in r and isinstance(r.get("step"), int)]
    times, prev = [], 0.0
    for r in rows:
        times.append(r["time"] - prev)
        prev = r["time"]
    return times, rows


def _common(shape: Shape, out: Path) -> dict:
    return dict(out=out, seed=0, max_steps=shape.steps, batch_size=shape.batch, max_length=shape.max_length,
                precision="fp32", log_every=1, save_every=0)


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
    else:
        tok = load_tokenizer(str(setup / "rm"))
        enc = [encode_pair(tok, c, shape.max_length) for c in read_comparisons(setup / "pairs.jsonl")]
        lens = [(len(a), len(b)) for a, b in enc]
        plan = BatchPlan([max(n) for n in lens], shape.batch, 0)
    return [[(i, *lens[i]) for i in plan.batch(s)] for s in range(shape.steps)]


def token_counts(task: str, setup: Path, shape: Shape) -> tuple[list[int], list[int]]:
    """(real tokens, padded tokens) per step of the shared batch order."""
    tokens, padded = [], []
    for b in batches(task, setup, shape):
        tokens.append(sum(sum(x[1:]) for x in b))
        padded.append(max(max(x[1:]) for x in b) * len(b) * (len(b[0]) - 1))
    return tokens, padded


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
    from prefloop.recipes.ppo import PPOConfig, PPOTrainer

    # Fixed length (--no-stop-at-eos): every completion has exactly new_tokens tokens, like TRL's side with
    # min_new_tokens; no response ever ends, so the no-EOS penalty is off (it would replace every score).
    cfg = PPOConfig(policy=str(setup / "lm"), reward=str(setup / "rm"), prompts=setup / "prompts.jsonl",
                    critic="reward", rollout_batch_size=shape.batch, ppo_epochs=4, max_new_tokens=shape.new_tokens,
                    stop_at_eos=False, no_eos_penalty=None, temperature=1.0, **_common(shape, out))
    trainer = PPOTrainer(cfg)
    trainer.run()
    times, rows = _step_times(out)
    split, prev = [], {"sample": 0.0, "score": 0.0, "update": 0.0}
    for r in rows:  # time/* are cumulative totals
        cur = {k: r.get(f"time/{k}", 0.0) or 0.0 for k in prev}
        split.append({k: cur[k] - prev[k] for k in prev})
        prev = cur
    # prompt tokens of each update: the trainer's own prompt order (prompts were filtered to fit, none is cut)
    tokens = []
    for u in range(shape.steps):
        prompt = sum(len(trainer.prompt_ids[i]) for i in trainer._prompt_batch(u))
        tokens.append(prompt + shape.batch * shape.new_tokens)
    lengths = [r.get("rollout/response_length") for r in rows]
    flops = [rl_flops_ppo(info["matmul_params_lm"], info["matmul_params_rm"], t, cfg.ppo_epochs) for t in tokens]
    return {"step_times": times, "samples": [shape.batch] * shape.steps, "tokens": tokens, "flops": flops,
            "split": split, "response_length": lengths,
            "generated_tokens": [shape.batch * shape.new_tokens] * shape.steps}


RUNNERS = {"sft": run_sft, "reward": run_reward, "ppo": run_ppo}
