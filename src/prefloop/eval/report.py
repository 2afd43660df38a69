"""Reports: Markdown tables, PNG plots and side-by-side samples for a run directory."""

from __future__ import annotations

import math
from pathlib import Path

from prefloop.runtime.metrics import read_metrics

STAGE_COLUMNS = [
    ("gold_reward_mean", "gold reward"), ("gold_win_rate_vs_sft", "gold win rate vs SFT"),
    ("reward_model_mean", "reward model"), ("kl_to_sft", "KL to SFT (k1)"), ("kl_to_sft_k3", "KL to SFT (k3)"),
    ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU (per prompt)"),
    ("mean_response_tokens", "response tokens"), ("no_eos_fraction", "never ends"),
    ("hallucination_rate", "made-up facts"), ("needless_refusal_rate", "needless refusals"),
    ("harmful_compliance_rate", "harmful compliance"),
]


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def stage_table(stages: dict[str, dict]) -> str:
    names = list(stages)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in STAGE_COLUMNS:
        if any(key in stages[n] for n in names):
            lines.append(f"| {label} | " + " | ".join(fmt(stages[n].get(key)) for n in names) + " |")
    return "\n".join(lines)


def plot_ppo_curves(metrics_file: Path, png: Path) -> bool:
    """Reward, KL and gold reward over PPO updates, one panel each."""
    rows = [r for r in read_metrics(metrics_file) if "rollout/score_mean" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    panels = [("rollout/score_mean", "reward-model score (normalised)"), ("kl/k1", "KL to reference (nats/seq)"),
              ("gold/mean", "gold reward (hidden judge)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, panels):
        ys = [r.get(key) for r in rows]
        ax.plot(steps, [y if y is not None else float("nan") for y in ys], marker=".", lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def plot_stages(stages: dict[str, dict], png: Path) -> None:
    """Gold reward and diversity per stage: the reliability / diversity trade in one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stages)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (key, title) in zip(axes, [("gold_reward_mean", "gold reward"), ("distinct_2", "distinct-2"),
                                       ("self_bleu", "self-BLEU (higher = less diverse)")]):
        ax.bar(names, [stages[n].get(key) or 0.0 for n in names], color=["#999", "#4a7", "#c63"][:len(names)])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def samples_table(samples: dict, n: int) -> str:
    names = list(samples)
    first = samples[names[0]][0]
    lines = []
    for i, prompt in enumerate(first.prompts[:n]):
        question = prompt.split("User:")[-1].split("\nAssistant:")[0].strip()
        lines.append(f"**{_cell(question)}**\n")
        lines.append("| stage | response | gold |")
        lines.append("|---|---|---|")
        for name in names:
            s, gold = samples[name]
            lines.append(f"| {name} | {_cell(s.responses[i][0])} | {gold[i][0]:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_demo_report(out: Path, metrics: dict, samples: dict, n_examples: int = 8) -> Path:
    out = Path(out)
    has_ppo_plot = plot_ppo_curves(out / "ppo" / "metrics.jsonl", out / "ppo_curves.png")
    plot_stages(metrics["stages"], out / "stages.png")
    rm = metrics["reward_model"]
    secs = metrics["seconds"]
    ppo = metrics["stages"].get("ppo", {})
    text = [
        "# prefloop demo report", "",
        f"Preset `{metrics['preset']}`, seed {metrics['seed']}, {secs['total']} s in all. Policies are judged on "
        "held-out prompts of the synthetic world by its hidden gold utility (never seen in training); "
        f"{metrics['settings']['eval_k']} samples per prompt at temperature {metrics['settings']['temperature']}.",
        "", "## Stages", "", stage_table(metrics["stages"]), "",
        "- *gold win rate vs SFT*: sample-against-sample comparisons under the gold judge, ties count half.",
        "- *KL to SFT*: per sequence, estimated on the policy's own samples (k1 = sum of log-ratios; k3 >= 0).",
        "- *self-BLEU* among the samples of one prompt (per-input diversity); *distinct-n* over all samples.",
        "", f"PPO spent {fmt(ppo.get('kl_to_sft'))} nats of KL to SFT "
        + (f"(adaptive KL target {metrics['settings']['kl_target']})." if metrics["settings"].get("kl_target")
           else f"(fixed KL coefficient {metrics['settings']['kl_coef']})."), "",
        "## Reward model", "",
        "| held-out accuracy (annotator labels) | agreement with gold | training comparisons | annotators vs gold |",
        "|---|---|---|---|",
        f"| {fmt(rm['heldout_accuracy'])} | {fmt(rm['gold_accuracy'])} | {rm['train_comparisons']} | "
        f"{fmt(rm.get('annotator_gold_agreement'))} |", "",
    ]
    if has_ppo_plot:
        text += ["## PPO training", "", "![PPO curves](ppo_curves.png)", ""]
    text += ["![stages](stages.png)", "", "## Time", "", "| stage | seconds |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in secs.items()]
    text += ["", "## Samples (the same held-out prompts at each stage)", "", samples_table(samples, n_examples)]
    path = out / "report.md"
    tmp = path.with_name("report.md.tmp")
    tmp.write_text("\n".join(text) + "\n")
    tmp.replace(path)
    return path
