"""Every policy-improvement method of prefloop on the demo world, side by side.

    python benchmarks/methods_world.py --demo runs/demo --out runs/methods [--only dpo,grpo] [--bon-n 8]

Reads a finished `prefloop demo` run (its world, SFT policy, reward model and labelled comparisons), trains
each method from the same SFT policy against the same reward model (DPO: on the same comparisons), then
evaluates every policy on the same held-out prompts with the same sampling seed and settings as the demo's
own evaluation: gold reward, gold win rate against SFT (ties half), KL to SFT (k1 and k3, nats per
sequence), reward-model score, diversity, and the wall time of training. PPO is the demo's own run.

Best-of-n needs no training: n samples of the SFT policy per draw, the one the reward model scores highest
is kept (eval_k draws per prompt); its KL to SFT is the exact log n - (n - 1) / n (EVALUATION.md), not an
estimate from samples. Writes OUT/methods.json and OUT/methods.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from prefloop.data import read_prompts
from prefloop.eval.sampling import PolicySamples, diversity_metrics, mean, sample_policy
from prefloop.eval.stages import evaluate_stages, preset_sampling, world_rates
from prefloop.models import load_causal_lm, load_reward_model, load_tokenizer
from prefloop.recipes.demo import DemoPreset
from prefloop.runtime.seeding import SECOND_EVAL_SEED_OFFSET
from prefloop.world import load_world

METHODS = ("dpo", "grpo", "rloo", "rejection-sampling", "best-of-n")


def gold_fn(world):
    return lambda prompts, responses: [world.gold.score(p, r) for p, r in zip(prompts, responses)]


def train_method(name: str, demo: Path, out: Path, p: DemoPreset, world, seed: int,
                 over: dict | None = None) -> Path:
    """Train one method from the demo's SFT policy; returns its final model directory. `over`: config fields
    that replace this script's defaults (from --set METHOD.FIELD=VALUE)."""
    over = over or {}
    sft, rm = str(demo / "sft" / "model"), str(demo / "reward" / "model")
    prompts = demo / "world" / "prompts_train.jsonl"
    common = dict(seed=seed, max_length=p.block + p.max_new_tokens)
    if name == "dpo":
        from prefloop.recipes.dpo import DPOConfig, run_dpo

        run_dpo(DPOConfig(**{**dict(model=sft, data=demo / "data" / "comparisons_train.jsonl",
                                    eval_data=demo / "data" / "comparisons_heldout.jsonl", out=out / "dpo", beta=0.1,
                                    epochs=2, lr=p.sft_lr / 10, batch_size=32, **common), **over}))
        return out / "dpo" / "model"
    if name in ("grpo", "rloo"):
        from prefloop.recipes.grpo import GRPOConfig, RLOOConfig, run_grpo, run_rloo

        cls, fn = (GRPOConfig, run_grpo) if name == "grpo" else (RLOOConfig, run_rloo)
        fn(cls(**{**dict(policy=sft, reward=rm, prompts=prompts, out=out / name, max_steps=p.ppo_steps,
                         num_generations=4, rollout_batch_size=p.rollout_batch, batch_size=p.ppo_batch, lr=p.ppo_lr,
                         kl_coef=0.05, max_new_tokens=p.max_new_tokens, temperature=p.temperature, **common),
                  **over}), gold_fn=gold_fn(world))
        return out / name / "model"
    if name == "rejection-sampling":
        from prefloop.recipes.rejection_sampling import RejectionSamplingConfig, run_rejection_sampling

        n_prompts = 500 if p.world == "default" else 100
        cfg = RejectionSamplingConfig(**{**dict(
            policy=sft, prompts=prompts, reward=rm, out=out / "rejection-sampling", rounds=2, num_samples=8,
            prompts_per_round=n_prompts, max_new_tokens=p.max_new_tokens, temperature=p.temperature, epochs=1,
            lr=p.sft_lr / 5, batch_size=32, **common), **over})
        run_rejection_sampling(cfg)
        return out / "rejection-sampling" / f"round_{cfg.rounds}" / "sft" / "model"
    raise ValueError(f"unknown method {name!r}")


def evaluate_best_of_n(world, demo: Path, prompts: list[str], p: DemoPreset, n: int, seed: int) -> dict:
    """eval_k best-of-n draws per prompt from the SFT policy under the demo's reward model."""
    tok = load_tokenizer(str(demo / "sft" / "model"))
    sft = load_causal_lm(str(demo / "sft" / "model"), tok).eval()
    rm = load_reward_model(str(demo / "reward" / "model"), tok).eval()
    s = sample_policy(sft, tok, prompts, n * p.eval_k, preset_sampling(tok, p), reward_model=rm,
                      seed=seed + SECOND_EVAL_SEED_OFFSET)
    picked = PolicySamples(prompts, [], [], [], reward_model=[])
    for i in range(len(prompts)):
        rows = [range(g * n, (g + 1) * n) for g in range(p.eval_k)]
        best = [max(r, key=lambda j: s.reward_model[i][j]) for r in rows]
        picked.responses.append([s.responses[i][j] for j in best])
        picked.ended.append([s.ended[i][j] for j in best])
        picked.lengths.append([s.lengths[i][j] for j in best])
        picked.reward_model.append([s.reward_model[i][j] for j in best])
    gold = [[world.gold.score(pr, r) for r in row] for pr, row in zip(prompts, picked.responses)]
    details = [world.gold.details(pr, r) for pr, row in zip(prompts, picked.responses) for r in row]
    kl = math.log(n) - (n - 1) / n
    return {"gold": gold, "stage": {"gold_reward_mean": mean([g for row in gold for g in row]),
                                    "reward_model_mean": mean(picked.flat("reward_model")),
                                    "kl_to_ref": kl, "kl_to_ref_k3": kl, **diversity_metrics(picked),
                                    "mean_response_tokens": mean([float(x) for x in picked.flat("lengths")]),
                                    "no_eos_fraction": mean([float(not e) for e in picked.flat("ended")]),
                                    **world_rates(details)}}


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """["dpo.lr=1e-4", "grpo.kl_coef=0.01"] -> {"dpo": {"lr": 1e-4}, "grpo": {"kl_coef": 0.01}} (values as JSON
    where they parse, else strings)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, field = key.partition(".")
        if not sep or not dot or method not in METHODS or not field:
            raise ValueError(f"expected METHOD.FIELD=VALUE with METHOD one of {', '.join(METHODS)}, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[field] = parsed
    return out


def table(stages: dict, seconds: dict) -> str:
    cols = [("gold reward", "gold_reward_mean"), ("gold win rate vs SFT", "gold_win_rate_vs_sft"),
            ("KL to SFT (k1)", "kl_to_ref"), ("KL (k3)", "kl_to_ref_k3"), ("reward-model score", "reward_model_mean"),
            ("distinct-2", "distinct_2"), ("self-BLEU per prompt", "self_bleu"),
            ("response tokens", "mean_response_tokens")]
    lines = ["| method | " + " | ".join(c for c, _ in cols) + " | training wall time (s) |",
             "|---|" + "---|" * (len(cols) + 1)]
    for name, s in stages.items():
        cells = [f"{s[k]:.3f}" if isinstance(s.get(k), float) else "" for _, k in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds.get(name, '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished `prefloop demo` run")
    ap.add_argument("--out", type=Path, default=Path("runs/methods"))
    ap.add_argument("--only", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    ap.add_argument("--bon-n", type=int, default=8, help="n of best-of-n")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                    help="override a method's config field, e.g. --set dpo.lr=1e-4 --set grpo.kl_coef=0.01")
    args = ap.parse_args(argv)
    metrics_file = args.demo / "metrics.json"
    if not metrics_file.exists():
        print(f"error: {metrics_file}: not found (run `prefloop demo --out {args.demo}` first)", file=sys.stderr)
        return 2
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in only if m not in METHODS]
    if unknown:
        print(f"error: --only: unknown method(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        print(f"error: --set: {e}", file=sys.stderr)
        return 2
    demo_metrics = json.loads(metrics_file.read_text())
    p = DemoPreset(**demo_metrics["settings"])
    world = load_world(args.demo / "world")
    heldout = [r.prompt for r in read_prompts(args.demo / "world" / "prompts_heldout.jsonl")][:p.eval_prompts]
    torch.manual_seed(args.seed)

    dirs = {"sft": args.demo / "sft" / "model", "ppo": args.demo / "ppo" / "model"}
    seconds = {"ppo": demo_metrics["seconds"]["ppo"]}
    for name in [m for m in only if m != "best-of-n"]:
        t = time.perf_counter()
        dirs[name] = train_method(name, args.demo, args.out, p, world, args.seed, overrides.get(name))
        seconds[name] = round(time.perf_counter() - t, 1)
    ev = evaluate_stages(world, dirs, args.demo / "reward" / "model", heldout, p, demo_metrics["seed"])
    stages, samples = ev["stages"], ev["samples"]
    if "best-of-n" in only:
        from prefloop.eval.compare import win_rate

        t = time.perf_counter()
        bon = evaluate_best_of_n(world, args.demo, heldout, p, args.bon_n, args.seed)
        sft_gold = [g for row in samples["sft"][1] for g in row]
        bon["stage"]["gold_win_rate_vs_sft"] = win_rate([g for row in bon["gold"] for g in row], sft_gold)
        stages[f"best-of-{args.bon_n}"] = bon["stage"]
        seconds[f"best-of-{args.bon_n}"] = f"0 (sampling {round(time.perf_counter() - t, 1)})"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods.json").write_text(json.dumps({"stages": stages, "seconds": seconds,
                                                       "preset": demo_metrics["preset"]}, indent=2))
    md = table(stages, seconds)
    (args.out / "methods.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
