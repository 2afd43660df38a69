"""Does the iterated loop beat one round at the same labelling budget? Arms x seeds of `prefloop loop`.

    python benchmarks/loop_budget.py prepare --out runs/loop-budget            # world, pretrain, SFT (demo preset)
    python benchmarks/loop_budget.py run --out runs/loop-budget --seeds 0,1,2 --workers 4 [--arms one-round,loop]
    python benchmarks/loop_budget.py table --out runs/loop-budget              # -> OUT/loop_budget.md
    python benchmarks/loop_budget.py screening --out runs/loop-budget --seeds 0,1,2 --spammers 4

`prepare` builds the demo's world, base model and SFT policy (the same recipes and settings as `prefloop demo`).
`run` trains every arm from that SFT policy with every seed, each a `prefloop loop` run in OUT/arms/<arm>/<seed>
(several at a time with --workers; a finished run is skipped, so a stopped benchmark continues). Every arm
spends the same labelling budget (--labels comparisons, exactly: candidate prompts are drawn until the budget
is filled) and the same number of PPO updates (--updates, split evenly over the rounds). `table` writes, per
arm, the final gold reward (mean over seeds), its difference to the one-round arm paired by seed with a 95%
t-interval over seeds, the labels used, the annotators' and the reward model's agreement with gold per
round, and the final KL to SFT. `screening` measures annotator screening on one labelling round: --spammers of
the world's annotators answer at random, every annotator judges --gold-checks known pairs, and the reward model
fit on the labels that screening keeps is compared with one fit on every label (gold accuracy on the same
held-out pairs; OUT/loop_screening.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# Arms: LoopConfig fields over the shared settings of `loop_config`. "one-round" is the reference.
ARMS: dict[str, dict] = {
    "one-round": dict(rounds=1),
    "loop": dict(),
    "loop-uncertainty": dict(select="uncertainty"),
    "loop-spread": dict(pairs="spread", candidates=4),
    "loop-anchor": dict(pairs="anchor"),
    "loop-kl-ramp": dict(kl_strategy="ramp"),
    "loop-kl-reset": dict(kl_strategy="reset"),
    "loop-best": dict(pairs="anchor", kl_strategy="ramp"),
    "loop-all": dict(pairs="anchor", select="uncertainty", kl_strategy="ramp"),
    # a first round with most of the labels and updates (--front of each), then small corrective rounds
    "loop-front": dict(front=0.6),
    "loop-front-anchor": dict(front=0.6, pairs="anchor"),
    "loop-front-fill": dict(front=0.6, candidates=4),  # the first two different of 4 replies: fewer identical
    "loop-front-uncertainty": dict(front=0.6, candidates=4, select="uncertainty"),
}
KEY_ARMS = ("one-round", "loop", "loop-best", "loop-all")  # run first: a benchmark cut short still compares them
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def loop_config(prep: Path, out: Path, arm: str, seed: int, a: argparse.Namespace):
    from prefloop.recipes.loop import LoopConfig

    over = dict(ARMS[arm])
    if over.get("select", "random") != "random":
        over["pool_factor"] = a.select_pool  # candidates to choose from: more prompts than labels
    rounds = over.pop("rounds", a.rounds)
    front = over.pop("front", 0.0)
    steps = dict(rl_steps=a.updates // rounds)
    if front and rounds > 1:  # round 1: front x labels and updates; the rest evenly over the later rounds
        first = int(round(front * a.updates))
        steps = dict(first_round_share=front, first_round_rl_steps=first,
                     rl_steps=(a.updates - first) // (rounds - 1))
    base = dict(world=prep / "world", policy=str(prep / "sft" / "model"), out=out, rounds=rounds,
                comparisons=a.labels, pool_factor=1.5, **steps, rollout_batch_size=a.rollout,
                batch_size=min(32, a.rollout), rl_lr=1e-4, kl_coef=0.1, kl_target=a.kl_target, kl_horizon=640,
                max_new_tokens=a.max_new_tokens, temperature=0.7, max_length=128, rm_epochs=2, rm_lr=2e-4,
                rm_batch=32, eval_prompts=a.eval_prompts, eval_k=a.eval_k, seed=seed)
    return LoopConfig(**{**base, **over})


def prepare(a: argparse.Namespace) -> None:
    from prefloop.recipes.demo import PRESETS
    from prefloop.recipes.pretrain import PretrainConfig, run_pretrain
    from prefloop.recipes.sft import SFTConfig, run_sft
    from prefloop.world import WorldConfig, build_world, write_world

    p, out = PRESETS[a.preset], Path(a.out) / "prep"
    if (out / "sft" / "model").is_dir():
        print(f"{out}: already prepared")
        return
    write_world(build_world(WorldConfig.preset(p.world, seed=0)), out / "world")
    run_pretrain(PretrainConfig(data=out / "world" / "corpus.jsonl", out=out / "base", size=p.size,
                                vocab_size=p.vocab_size, epochs=p.pretrain_epochs, batch_size=p.pretrain_batch,
                                lr=p.pretrain_lr, max_length=p.block, seed=0))
    run_sft(SFTConfig(model=str(out / "base" / "model"), data=out / "world" / "demonstrations.jsonl",
                      out=out / "sft", epochs=p.sft_epochs, lr=p.sft_lr, batch_size=p.sft_batch,
                      max_length=p.block, seed=0))


def run_one(prep: str, out: str, arm: str, seed: int, a: argparse.Namespace) -> tuple[str, int, dict | str]:
    import torch

    torch.set_num_threads(a.threads)
    from prefloop.recipes.loop import Loop

    d = Path(out) / "arms" / arm / str(seed)
    if (d / "loop.json").is_file():
        return arm, seed, json.loads((d / "loop.json").read_text())
    try:
        return arm, seed, Loop(loop_config(Path(prep), d, arm, seed, a)).run()
    except Exception as e:  # one failed run must not lose the others; the table shows it missing
        return arm, seed, f"{type(e).__name__}: {e}"


def run(a: argparse.Namespace) -> None:
    out = Path(a.out)
    arms = a.arms.split(",") if a.arms else list(ARMS)
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        sys.exit(f"error: unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    # --arms names arms in the order to run them (all seeds of one, then the next); by default KEY_ARMS first.
    jobs = [(arm, s) for arm in arms for s in seeds] if a.arms else \
        sorted(((arm, s) for s in seeds for arm in arms), key=lambda j: (j[0] not in KEY_ARMS, j[1]))
    with ProcessPoolExecutor(a.workers) as pool:
        futs = [pool.submit(run_one, str(out / "prep"), str(out), arm, seed, a) for arm, seed in jobs]
        for f in as_completed(futs):
            arm, seed, res = f.result()
            last = res["rounds"][-1]["gold_reward_mean"] if isinstance(res, dict) else res
            print(f"{arm} seed {seed}: {last}", flush=True)
    table(a)


def _interval(diffs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(diffs)
    if len(diffs) < 2:
        return m, math.nan
    return m, T975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def _fmt(x, nd=3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def collect(out: Path) -> dict[str, dict[int, dict]]:
    res: dict[str, dict[int, dict]] = {}
    for f in sorted(out.glob("arms/*/*/loop.json")):
        res.setdefault(f.parent.parent.name, {})[int(f.parent.name)] = json.loads(f.read_text())
    return res


def table(a: argparse.Namespace) -> str:
    out = Path(a.out)
    res = collect(out)
    ref = res.get("one-round", {})
    lines = ["| arm | seeds | labels | gold reward (final) | - one round (95% CI) "
             "| annotators agree with gold, per round"
             " | RM agrees with gold, per round | KL to SFT, per round | initial gold |", "|---|" + "---|" * 8]
    summary = {}
    for arm in [x for x in ARMS if x in res]:
        runs = res[arm]
        final = {s: r["rounds"][-1]["gold_reward_mean"] for s, r in runs.items()}
        diffs = [final[s] - ref[s]["rounds"][-1]["gold_reward_mean"] for s in final if s in ref]
        d, hw = _interval(diffs) if diffs and arm != "one-round" else (math.nan, math.nan)

        def per_round(key, runs=runs):
            n = len(next(iter(runs.values()))["rounds"])
            vals = [statistics.fmean(r["rounds"][i][key] for r in runs.values()
                                     if r["rounds"][i].get(key) is not None) for i in range(n)]
            return ", ".join(_fmt(v, 2) for v in vals)

        labels = statistics.fmean(sum(x["labels"] or 0 for x in r["rounds"]) for r in runs.values())
        initial = statistics.fmean(r["initial"]["gold_reward_mean"] for r in runs.values())
        lines.append(f"| {arm} | {len(runs)} | {labels:.0f} | {_fmt(statistics.fmean(final.values()))} | "
                     f"{_fmt(d)} +- {_fmt(hw)} | {per_round('annotator_gold_agreement')} | "
                     f"{per_round('rm_gold_accuracy')} | {per_round('kl_to_ref')} | {_fmt(initial)} |")
        summary[arm] = {"final_gold": final, "diff_vs_one_round": d, "ci95_half_width": hw, "labels": labels}
    text = "\n".join(lines) + "\n"
    (out / "loop_budget.md").write_text(text)
    (out / "loop_budget.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return text


def pairs(a: argparse.Namespace) -> None:
    """One labelling round from an RL-trained policy (a loop's round 2, no training): for each way of drawing
    and selecting pairs, how many prompts give a comparable pair, how often the world's annotators agree with
    gold on them, the gold gap, and how often the policy's reward model already orders them right."""
    import random

    import torch

    from prefloop.data import read_prompts
    from prefloop.recipes import loop_select as ls
    from prefloop.rl.selection import select_top, usefulness
    from prefloop.world import load_world

    prep = Path(a.out) / "prep"
    world = load_world(prep / "world")
    prompts = [p.prompt for p in read_prompts(prep / "world" / "prompts_train.jsonl")]
    prompts = random.Random(a.pair_seed).sample(prompts, min(a.pair_prompts, len(prompts)))
    policy, initial, rm = str(prep / "ppo" / "model"), str(prep / "sft" / "model"), str(prep / "reward" / "model")
    cur = ls.sample_candidates(policy, prompts, 4, a.max_new_tokens, 0.7, a.pair_seed, "rl")
    old = ls.sample_candidates(initial, prompts, 4, a.max_new_tokens, 0.7, a.pair_seed + 1, "initial")
    both = ls.merge(cur, old)
    scores = ls.member_scores(rm, prompts, both.replies, 128)
    cur_only = ls.Candidates(prompts, [r[:2] for r in cur.replies], [s[:2] for s in cur.sources])
    arms = {"same (2 samples)": (cur_only, "same", scores[:, :, :2], None),
            "same (first 2 different of 4)": (cur, "same", scores[:, :, :4], None),
            "spread (RM best vs worst of 4)": (cur, "spread", scores[:, :, :4], None),
            "anchor (RL vs initial)": (both, "same", scores, 4)}
    lines = ["| pairs | selection | comparable / prompts | annotators agree with gold | mean gold gap "
             "| RM orders right |", "|---|---|---|---|---|---|"]
    for name, (cands, how, sc, split) in arms.items():
        items, margins = ls.draw_items(cands, how, sc, split)
        for sel in ("random", "uncertainty"):
            keep = select_top(usefulness(margins, sel), len(items) // 2, torch.Generator().manual_seed(0)) \
                if sel == "uncertainty" else list(range(len(items)))
            chosen = [items[i] for i in keep]
            recs = world.label_pairs([c["prompt"] for c in chosen], [c["responses"][0] for c in chosen],
                                     [c["responses"][1] for c in chosen], seed=a.pair_seed)
            ann = [float(r["meta"]["gold_chosen"] > r["meta"]["gold_rejected"]) for r in recs
                   if r["meta"]["gold_chosen"] != r["meta"]["gold_rejected"]]
            g = [(world.gold.score(c["prompt"], c["responses"][0]) - world.gold.score(c["prompt"], c["responses"][1]),
                  float(margins[:, i].mean())) for c, i in zip(chosen, keep)]
            rm_right = [float((gap > 0) == (m > 0)) for gap, m in g if gap != 0]
            label = "all" if sel == "random" else "uncertainty, top half"
            lines.append(f"| {name} | {label} | {len(chosen)} / {len(prompts)} | {_fmt(statistics.fmean(ann))} | "
                         f"{_fmt(statistics.fmean(abs(x) for x, _ in g))} | {_fmt(statistics.fmean(rm_right))} |")
    text = "\n".join(lines) + "\n"
    (Path(a.out) / "loop_pairs.md").write_text(text)
    print(text)


def screening(a: argparse.Namespace) -> None:
    """One round (a single RL update: only the reward models matter here) per seed, with annotator screening."""
    import torch

    torch.set_num_threads(a.threads)
    from prefloop.recipes.loop import Loop

    prep, lines = Path(a.out) / "prep", []
    for seed in [int(s) for s in a.seeds.split(",")]:
        d = Path(a.out) / "screening" / str(seed)
        cfg = loop_config(prep, d, "one-round", seed, a)
        cfg.rl_steps, cfg.eval_prompts, cfg.eval_k = 1, 20, 1
        cfg.gold_checks, cfg.min_annotator_agreement = a.gold_checks, a.min_agreement
        loop = Loop(cfg)
        for ann in loop.world.annotators[:a.spammers]:
            ann.noise = 1.0  # answers at random
        loop.run()
        fb, rw = loop.state.results["1"]["feedback"], loop.state.results["1"]["reward"]
        spam = {x.id for x in loop.world.annotators[:a.spammers]}
        low = {k for k, v in fb["annotator_check_agreement"].items() if v < a.min_agreement}
        lines.append(f"| {seed} | {fb['comparisons']} | {fb['dropped_labels']} | {len(low & spam)}/{len(spam)} "
                     f"| {len(low - spam)} | {_fmt(fb['dropped_gold_agreement'])} "
                     f"| {_fmt(rw.get('gold_accuracy_unscreened'))} | {_fmt(rw.get('gold_accuracy'))} |")
    text = ("| seed | labels | dropped | spammers dropped | others dropped | dropped labels agree with gold "
            "| RM gold accuracy, every label | RM gold accuracy, screened |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")
    (Path(a.out) / "loop_screening.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("prepare", "run", "table", "pairs", "screening"))
    ap.add_argument("--out", default="runs/loop-budget")
    ap.add_argument("--preset", default="default", choices=("default", "tiny"))
    ap.add_argument("--arms", default="", help="comma list of arms (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 4))
    ap.add_argument("--labels", type=int, default=900, help="comparisons over the whole loop")
    ap.add_argument("--updates", type=int, default=30, help="PPO updates over the whole loop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kl-target", type=float, default=3.0)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--eval-k", type=int, default=4)
    ap.add_argument("--select-pool", type=float, default=3.0, help="candidate prompts per label, selecting arms")
    ap.add_argument("--rollout", type=int, default=64, help="completions per PPO update")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--pair-prompts", type=int, default=600, help="pairs: train prompts to draw pairs for")
    ap.add_argument("--pair-seed", type=int, default=0)
    ap.add_argument("--spammers", type=int, default=4, help="screening: annotators who answer at random")
    ap.add_argument("--gold-checks", type=int, default=20, help="screening: known pairs per annotator")
    ap.add_argument("--min-agreement", type=float, default=0.75, help="screening: drop annotators below this")
    a = ap.parse_args(argv)
    {"prepare": prepare, "run": run, "table": table, "pairs": pairs, "screening": screening}[a.command](a)


if __name__ == "__main__":
    main()
