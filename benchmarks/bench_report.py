"""Summaries across repetitions, the markdown tables, and the machine / version record."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from bench_common import median_of, summarise

UNITS = {"sft": "sequences/s", "reward": "pairs/s", "dpo": "pairs/s", "ppo": "completions/s",
         "grpo": "completions/s", "rloo": "completions/s"}
PEER = {"sft": "SFTTrainer", "reward": "RewardTrainer", "dpo": "DPOTrainer", "ppo": "RLOOTrainer",
        "grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}
OURS = {"sft": "run_sft", "reward": "run_reward", "dpo": "run_dpo", "ppo": "run_ppo (PPO)", "grpo": "run_grpo",
        "rloo": "run_rloo"}
RL_TASKS = ("ppo", "grpo", "rloo")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("prefloop", "torch", "transformers", "trl", "datasets", "accelerate", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=root,
                               capture_output=True, text=True)
        out["prefloop_commit"] = rev.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return out


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def summarise_all(runs: list[dict], peak_gflops: float) -> dict:
    """{task: {label: summary}}: medians over repetitions of each run's timed-step summary."""
    by: dict[str, dict[str, list[dict]]] = {}
    for r in runs:
        if not r["result"].get("ok"):
            continue
        s = summarise(r["result"], r["shape"]["warmup"])
        by.setdefault(r["task"], {}).setdefault(r["label"], []).append(s)
    out: dict[str, dict[str, dict]] = {}
    for task, labels in by.items():
        out[task] = {}
        for label, ss in labels.items():
            m = {k: median_of([s[k] for s in ss]) for k in ("median_step_s", "samples_per_s", "tokens_per_s",
                                                            "flops_per_s")}
            m["repeats"] = len(ss)
            m["samples_per_s_each"] = [round(s["samples_per_s"], 3) for s in ss]
            m["utilisation"] = m["flops_per_s"] / (peak_gflops * 1e9)
            if "pad_fraction" in ss[0]:
                m["pad_fraction"] = median_of([s["pad_fraction"] for s in ss])
            if "reference_s" in ss[0]:
                m["reference_s"] = median_of([s["reference_s"] for s in ss])
                m["train_only_samples_per_s"] = median_of([s["train_only_samples_per_s"] for s in ss])
            if "split_s" in ss[0]:
                m["split_s"] = {k: median_of([s["split_s"][k] for s in ss]) for k in ss[0]["split_s"]}
                m["sample_tokens_per_s"] = median_of([s["sample_tokens_per_s"] for s in ss])
            out[task][label] = m
        base = out[task].get("trl")
        for m in out[task].values():
            m["ratio_vs_trl"] = m["samples_per_s"] / base["samples_per_s"] if base else None
    return out


def _f(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def tables(summary: dict, peak_gflops: float) -> str:
    lines = [f"fp32 matmul peak measured in this run: {peak_gflops:.0f} GFLOP/s (2 threads)", "",
             "| task | framework | throughput | prefloop / this | FLOP utilisation | median step (s) | "
             "real tokens/s | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for task, labels in summary.items():
        ours = labels.get("prefloop")
        for label, m in labels.items():
            name = f"prefloop {OURS[task]}" if label == "prefloop" else f"{label} {PEER[task]}"
            ratio = "1" if label == "prefloop" else _f(ours["samples_per_s"] / m["samples_per_s"]) if ours else "-"
            lines.append(f"| {task} | {name} | {m['samples_per_s']:.2f} {UNITS[task]} | {ratio} | "
                         f"{100 * m['utilisation']:.1f}% | {m['median_step_s']:.2f} | {m['tokens_per_s']:.0f} | "
                         f"{m['repeats']} |")
    dpo = summary.get("dpo")
    if dpo:
        lines += ["", "DPO and its reference log-probs (prefloop precomputes them in one pass before training, "
                  "counted in the throughput above as each step's share; TRL runs the reference in every step):", "",
                  "| framework | pairs/s with reference | pairs/s of the training steps alone | reference pass (s) |",
                  "|---|---|---|---|"]
        for label, m in dpo.items():
            ref = m.get("reference_s")
            alone = m.get("train_only_samples_per_s")
            lines.append(f"| {label} | {m['samples_per_s']:.2f} | "
                         f"{'-' if alone is None else f'{alone:.2f}'} | "
                         f"{'in each step' if ref is None else f'{ref:.2f}'} |")
    rl = [t for t in RL_TASKS if t in summary]
    if rl:
        lines += ["", "RL step split (median seconds per update of 16 completions; sample = generation, "
                  "score = log-probs / reference / values / reward, update = optimisation and the rest):", "",
                  "| task | framework | sample | score | update | step | sampling new tokens/s |",
                  "|---|---|---|---|---|---|---|"]
        for task in rl:
            for label, m in summary[task].items():
                sp = m["split_s"]
                lines.append(f"| {task} | {label} | {sp['sample']:.2f} | {sp['score']:.2f} | {sp['update']:.2f} | "
                             f"{m['median_step_s']:.2f} | {m['sample_tokens_per_s']:.0f} |")
    return "\n".join(lines)
