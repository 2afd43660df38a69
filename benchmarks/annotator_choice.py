"""Whose values? The same SFT sample pairs labelled by each annotator pool of the world, a reward model and a PPO
policy per pool, every policy evaluated on the same held-out prompts against the world's gold judge.

    python benchmarks/annotator_choice.py --run runs/demo --out runs/annotator-choice [--ppo-steps 30]

Reads a finished `prefloop demo` run (RUN/world, RUN/sft/model, RUN/data/comparisons_{train,heldout}.jsonl) and never
writes into it. For each pool of `prefloop.world.annotators.POOLS` (standard, verbose, refusal_averse,
politeness_blind):

1. the demo's SFT sample pairs (both files, the same pairs for every pool) are relabelled by `--annotators`
   simulated annotators all drawn from that pool (`make_annotators` + `label_pairs`, same seed for every pool, so
   the pools differ only in their bias); the demo's held-out prompts stay held out;
2. a Bradley-Terry reward model is trained from the SFT model on the pool's train labels (`prefloop.recipes.reward`,
   the demo preset's settings);
3. PPO runs from SFT against that reward model (`prefloop.recipes.ppo`, the demo preset's settings but
   `--ppo-steps` updates);
4. SFT and every pool's policy are evaluated on the same held-out prompts (`prefloop.eval.stages.evaluate_stages`:
   gold reward, the demo's reward model as a common proxy, KL to SFT, length, refusal and harmful-compliance rates,
   red-team rates, made-up facts, diversity).

Writes OUT/annotator_choice.json and OUT/annotator_choice.md (one column per policy); OUT/<pool>/ holds the labels,
reward model and PPO run of each pool. `--resume` reuses finished reward models and PPO runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

POOL_NAMES = ("standard", "verbose", "refusal_averse", "politeness_blind")

ROWS = [  # (metric key, label, format)
    ("gold_reward_mean", "gold reward", ".3f"),
    ("gold_win_rate_vs_sft", "gold win rate vs SFT (ties half)", ".3f"),
    ("reward_model_mean", "demo reward model score (common proxy)", ".3f"),
    ("kl_to_ref", "KL to SFT (nats/seq, k1)", ".2f"),
    ("mean_response_tokens", "response tokens", ".1f"),
    ("refusal_rate_harmful", "refusals of harmful requests", ".3f"),
    ("harmful_compliance_rate", "harmful compliance", ".3f"),
    ("needless_refusal_rate", "needless refusals", ".3f"),
    ("redteam_bad_answer_rate", "red team: bad answers", ".3f"),
    ("redteam_needless_refusal_rate", "red team: needless refusals", ".3f"),
    ("hallucination_rate", "made-up facts (fact questions)", ".3f"),
    ("distinct_2", "distinct-2", ".3f"),
    ("self_bleu", "self-BLEU per prompt", ".3f"),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def relabel(records: list[dict], pool: str, n_annotators: int, gold, seed: int) -> list[dict]:
    """The same (prompt, response, response) pairs, labelled by annotators of one pool."""
    from prefloop.world import label_pairs, make_annotators

    anns = make_annotators(n_annotators, {pool: 1.0}, seed=seed, gold=gold)
    # Present the pair in a seeded order that does not depend on the demo's label (which side its annotator chose).
    rng = random.Random(f"annotator-choice-order-{seed}")
    a, b = [], []
    for r in records:
        x, y = (r["chosen"], r["rejected"]) if rng.random() < 0.5 else (r["rejected"], r["chosen"])
        a.append(x)
        b.append(y)
    return label_pairs([r["prompt"] for r in records], a, b, anns, seed=seed)


def gold_agreement(records: list[dict]) -> float:
    agree = [float(r["meta"]["gold_chosen"] > r["meta"]["gold_rejected"]) for r in records
             if r["meta"]["gold_chosen"] != r["meta"]["gold_rejected"]]
    return sum(agree) / max(1, len(agree))


def labels_differing(out: Path, pools: list[str], base: str = "standard") -> dict[str, float]:
    """Per pool, the fraction of train pairs (matched by id) whose preferred response differs from the `base`
    pool's label. Annotators are drawn with the same seed in every pool, so a difference comes from the pool's
    bias alone: a bias shows only on pairs where it separates the two responses."""
    def chosen(pool: str) -> dict[str, str]:
        f = out / pool / "data" / "comparisons_train.jsonl"
        return {r["id"]: r["chosen"] for r in map(json.loads, f.read_text().splitlines()) if r}

    if base not in pools:
        return {}
    ref = chosen(base)
    res = {}
    for pool in pools:
        mine = chosen(pool)
        common = [i for i in mine if i in ref]
        res[pool] = sum(mine[i] != ref[i] for i in common) / max(1, len(common))
    return res


def run_pool(pool: str, args, world, preset, train: list[dict], heldout: list[dict]) -> dict:
    from prefloop.data import write_jsonl
    from prefloop.eval.commands.reward import evaluate_reward_model
    from prefloop.recipes.ppo import PPOConfig, run_ppo
    from prefloop.recipes.reward import RewardConfig, run_reward

    out = args.out / pool
    sft = args.run / "sft" / "model"
    t0 = time.perf_counter()
    tr = relabel(train, pool, args.annotators, world.gold, args.seed)
    he = relabel(heldout, pool, args.annotators, world.gold, args.seed + 1)
    write_jsonl(out / "data" / "comparisons_train.jsonl", tr)
    write_jsonl(out / "data" / "comparisons_heldout.jsonl", he)
    stats = {"train_comparisons": len(tr), "heldout_comparisons": len(he), "label_gold_agreement": gold_agreement(tr)}
    common = {"seed": args.seed, "precision": "auto"}
    if not (args.resume and (out / "reward" / "model").exists()):
        log(f"{pool}: reward model on {len(tr)} comparisons")
        run_reward(RewardConfig(model=str(sft), data=out / "data" / "comparisons_train.jsonl",
                                eval_data=out / "data" / "comparisons_heldout.jsonl", out=out / "reward",
                                epochs=preset.rm_epochs, lr=preset.rm_lr, batch_size=preset.rm_batch,
                                max_length=preset.block, **common))
    rm = evaluate_reward_model(out / "reward" / "model", out / "data" / "comparisons_heldout.jsonl")
    stats.update({"rm_heldout_accuracy": rm["heldout_accuracy"], "rm_gold_accuracy": rm["gold_accuracy"]})
    t1 = time.perf_counter()
    if not (args.resume and (out / "ppo" / "model").exists()):
        log(f"{pool}: PPO, {preset.ppo_steps} updates")
        run_ppo(PPOConfig(policy=str(sft), reward=str(out / "reward" / "model"),
                          prompts=args.run / "world" / "prompts_train.jsonl", out=out / "ppo",
                          max_steps=preset.ppo_steps, rollout_batch_size=preset.rollout_batch,
                          batch_size=preset.ppo_batch, lr=preset.ppo_lr, kl_coef=preset.kl_coef,
                          kl_target=preset.kl_target, kl_horizon=preset.kl_horizon,
                          max_new_tokens=preset.max_new_tokens, temperature=preset.temperature,
                          max_length=preset.block + preset.max_new_tokens, **common),
                gold_fn=lambda ps, rs: [world.gold.score(a, b) for a, b in zip(ps, rs)])
    stats["seconds"] = {"reward": round(t1 - t0, 1), "ppo": round(time.perf_counter() - t1, 1)}
    return stats


def refusal_of_harmful(world, samples) -> float:
    """Fraction of responses to harmful held-out requests that refuse (the complement of harmful compliance
    plus off-topic answers): what the refusal-averse pool pushes against."""
    s, _ = samples
    vals = []
    for p, row in zip(s.prompts, s.responses):
        if world.family(p) != "harmful":
            continue
        vals += [float(world.gold.details(p, r)["refused"]) for r in row]
    return sum(vals) / max(1, len(vals))


def markdown(result: dict) -> str:
    cols = list(result["policies"])
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key, label, fmt in ROWS:
        cells = []
        for c in cols:
            v = result["policies"][c].get(key)
            cells.append("-" if v is None else format(v, fmt))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pools = [c for c in cols if c in result["pools"]]
    for key, label, fmt in (("label_gold_agreement", "labels agreeing with gold (train pairs)", ".3f"),
                            ("labels_differing_from_standard", "labels differing from the standard pool's", ".3f"),
                            ("rm_gold_accuracy", "pool's reward model agrees with gold (held-out pairs)", ".3f"),
                            ("rm_heldout_accuracy", "pool's reward model on its own held-out labels", ".3f")):
        lines.append(f"| {label} | " + " | ".join(
            ["-" if c not in pools or key not in result["pools"][c] else format(result["pools"][c][key], fmt)
             for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished demo run (read only)")
    ap.add_argument("--out", type=Path, default=Path("runs/annotator-choice"))
    ap.add_argument("--pools", nargs="+", default=list(POOL_NAMES))
    ap.add_argument("--ppo-steps", type=int, default=30)
    ap.add_argument("--max-pairs", type=int, default=0, help="use at most this many train pairs (0: all)")
    ap.add_argument("--eval-prompts", type=int, default=0, help="0: the demo preset's number")
    ap.add_argument("--annotators", type=int, default=20, help="simulated annotators per pool")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--summarise-only", action="store_true",
                    help="rewrite OUT/annotator_choice.{json,md} from a finished OUT (adds the label differences)")
    args = ap.parse_args(argv)
    if args.summarise_only:
        result = json.loads((args.out / "annotator_choice.json").read_text())
        summarise(args.out, result)
        return 0

    from prefloop.data import read_prompts
    from prefloop.eval.stages import evaluate_stages
    from prefloop.recipes.demo import PRESETS
    from prefloop.runtime import seed_everything, write_json
    from prefloop.world import POOLS, load_world

    if args.out.resolve() == args.run.resolve() or args.run.resolve() in args.out.resolve().parents:
        print("error: --out must not be inside --run (the demo run is read only)", file=sys.stderr)
        return 2
    for p in args.pools:
        if p not in POOLS:
            print(f"error: unknown pool {p!r}; known: {', '.join(POOLS)}", file=sys.stderr)
            return 2
    t_start = time.perf_counter()
    seed_everything(args.seed)
    preset = replace(PRESETS[args.preset], ppo_steps=args.ppo_steps)
    if args.eval_prompts:
        preset = replace(preset, eval_prompts=args.eval_prompts)
    world = load_world(args.run / "world")
    read = lambda f: [json.loads(line) for line in (args.run / "data" / f).read_text().splitlines() if line.strip()]  # noqa: E731
    train, heldout = read("comparisons_train.jsonl"), read("comparisons_heldout.jsonl")
    if args.max_pairs:
        train = train[:args.max_pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    pools = {}
    for pool in args.pools:
        pools[pool] = run_pool(pool, args, world, preset, train, heldout)
        write_json(args.out / "pools_partial.json", pools)

    log("evaluating SFT and every pool's policy on the same held-out prompts")
    t_eval = time.perf_counter()
    prompts = [r.prompt for r in read_prompts(args.run / "world" / "prompts_heldout.jsonl")][:preset.eval_prompts]
    dirs = {"sft": args.run / "sft" / "model", **{p: args.out / p / "ppo" / "model" for p in args.pools}}
    ev = evaluate_stages(world, dirs, args.run / "reward" / "model", prompts, preset, args.seed)
    stages, samples = ev["stages"], ev["samples"]
    for name in stages:
        stages[name]["refusal_rate_harmful"] = refusal_of_harmful(world, samples[name])
    result = {"run": str(args.run), "policies": stages, "pools": pools,
              "pool_descriptions": {p: POOLS[p].description for p in args.pools},
              "sizes": {"train_pairs": len(train), "heldout_pairs": len(heldout), "annotators_per_pool":
                        args.annotators, "ppo_steps": preset.ppo_steps, "eval_prompts": len(prompts),
                        "eval_k": preset.eval_k},
              "settings": {f.name: getattr(preset, f.name) for f in fields(preset)},
              "seconds": {"evaluate": round(time.perf_counter() - t_eval, 1),
                          "total": round(time.perf_counter() - t_start, 1)},
              "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}
    summarise(args.out, result)
    (args.out / "pools_partial.json").unlink(missing_ok=True)
    return 0


def summarise(out: Path, result: dict) -> None:
    """Add the label differences between pools, write OUT/annotator_choice.json and .md, print the table."""
    from prefloop.runtime import write_json

    for pool, v in labels_differing(out, list(result["pools"])).items():
        result["pools"][pool]["labels_differing_from_standard"] = v
    write_json(out / "annotator_choice.json", result)
    md = markdown(result)
    (out / "annotator_choice.md").write_text(
        f"# Annotator choice: one PPO policy per annotator pool\n\nDemo run: `{result['run']}`; sizes: "
        f"{json.dumps(result['sizes'])}; {result['seconds']['total']} s.\n\n" + md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
