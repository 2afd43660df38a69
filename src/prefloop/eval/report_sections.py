"""Report sections that read the intervals of a run (`prefloop.eval.intervals`): the run summary, the
regression box, the stage table with intervals and stage-to-stage differences, win rates raw and controlled
for length, and the worst samples the regression box links to."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .report_doc import Cell, Doc, fmt, fmt_ci, pyplot

# (key, label) in reading order: quality, safety, then what it cost (KL, diversity, length).
STAGE_ROWS = [
    ("gold_reward_mean", "gold reward (mean per sample)"), ("gold_win_rate_vs_sft", "gold win rate vs SFT"),
    ("win_rate_vs_ref", "win rate vs reference"), ("reward_model_mean", "reward model score (the proxy)"),
    ("redteam_bad_answer_rate", "red team: bad answers"), ("harmful_compliance_rate", "harmful compliance"),
    ("hallucination_rate", "made-up facts (fact questions)"), ("needless_refusal_rate", "needless refusals"),
    ("redteam_needless_refusal_rate", "red team: needless refusals"),
    ("kl_to_ref", "KL to reference (SFT in demo and loop), k1 (nats / sequence)"),
    ("kl_to_ref_k3", "KL to reference, k3"),
    # the same KL in metrics.json files written before it had one name (kl_to_ref, eval.stages)
    ("kl_to_sft", "KL to SFT, k1 (nats / sequence)"), ("kl_to_sft_k3", "KL to SFT, k3"),
    ("per_input/distinct_2", "distinct-2 per prompt (among its K samples)"),
    ("per_input/self_bleu", "self-BLEU per prompt (higher = less diverse)"),
    ("per_input/ead", "EAD per prompt"), ("entropy", "token entropy (nats)"),
    ("distinct_1", "distinct-1, all samples pooled"), ("distinct_2", "distinct-2, all samples pooled"),
    ("across_input/distinct_2", "distinct-2 across prompts (first sample each)"),
    ("across_input/self_bleu", "self-BLEU across prompts (first sample each)"),
    ("across_input/ead", "EAD across prompts (first sample each)"),
    ("mean_response_tokens", "response tokens"), ("no_eos_fraction", "never ends (hits the token limit)"),
]
LABELS = dict(STAGE_ROWS)
# The same measure under an older name: shown once.
ALIASES = {"self_bleu": "per_input/self_bleu"}
PIPELINE = ("world", "pretrain", "base", "sft", "comparisons", "data", "reward", "ppo", "dpo", "ipo", "kto", "orpo",
            "simpo", "grpo", "rloo", "rejection-sampling", "best-of-n", "evaluate")


def pipeline_rank(name: str) -> tuple[int, str]:
    """Sort key: known stages in pipeline order (loop rounds `round-2/ppo` by round), the rest after."""
    parts = name.split("/")
    stage = parts[-1]
    rnd = next((int(p.split("-")[-1]) for p in parts[:-1] if p.startswith("round-") and p.split("-")[-1].isdigit()),
               0)
    return (rnd * 100 + (PIPELINE.index(stage) if stage in PIPELINE else len(PIPELINE)), name)


# -- run summary -----------------------------------------------------------------------------------------------
def _stage_config(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("config"), dict) else None


def _short(path, run_dir: Path) -> str:
    if not path:
        return ""
    p = str(path)
    root = str(run_dir.resolve())
    return p[len(root) + 1:] if p.startswith(root + "/") else Path(p).name if len(p) > 60 else p


SETTING_KEYS = ("epochs", "max_steps", "lr", "batch_size", "kl_coef", "kl_target", "rollout_batch_size",
                "max_new_tokens", "temperature", "beta", "size", "vocab_size")


def section_run_summary(doc: Doc, m: dict, run_dir: Path) -> None:
    """What was trained on what, for how long, with which settings: one row per stage directory."""
    rows = []
    seconds = m.get("seconds") or {}
    for f in sorted(run_dir.glob("*/prefloop.json"), key=lambda f: pipeline_rank(f.parent.name)):
        d = _stage_config(f)
        if d is None:
            continue
        c, name = d["config"], f.parent.name
        start = c.get("model") or c.get("policy") or (f"from scratch ({c['size']})" if c.get("size") else "")
        data = c.get("data") or c.get("prompts")
        fin = d.get("metrics") or {}
        steps = fin.get("steps") or fin.get("updates") or c.get("max_steps")
        sets = ", ".join(f"{k} {fmt(c[k]) if isinstance(c[k], float) else c[k]}" for k in SETTING_KEYS
                         if c.get(k) is not None)
        rows.append([name, _short(start, run_dir), _short(data, run_dir), steps if steps is not None else "",
                     seconds.get(name, seconds.get("pretrain" if name == "base" else name)), sets])
    if not rows:
        return
    header = ["stage", "started from", "trained on", "steps", "seconds", "settings"]
    if all(r[4] is None for r in rows):  # a run without timings: no column of n/a
        header, rows = header[:4] + header[5:], [r[:4] + r[5:] for r in rows]
    doc.heading("What was run")
    doc.table(header, rows, "run-summary")


def section_evaluation_note(doc: Doc, m: dict) -> None:
    ev = m.get("evaluation") or {}
    st = m.get("settings") or {}
    if not ev:
        return
    doc.para(f"Evaluation: {ev.get('prompts')} held-out prompts x {ev.get('samples_per_prompt')} samples per stage "
             f"(temperature {st.get('temperature', 'n/a')}, at most {st.get('max_new_tokens', 'n/a')} new tokens)"
             + (f", and {ev['redteam_prompts']} red-team prompts x {ev.get('samples_per_prompt')}"
                if ev.get("redteam_prompts") else "")
             + f". Every number has a {round(100 * ev.get('level', 0.95))}% interval from a bootstrap over prompts "
               "(each prompt resampled with all its samples); differences between stages are paired on the prompts.")


# -- regressions ---------------------------------------------------------------------------------------------------
def section_regressions(doc: Doc, m: dict) -> None:
    regs = m.get("regressions")
    if regs is None:
        return
    items = []
    for r in regs:
        later = r["comparison"].split(" - ")[0]
        label = LABELS.get(r["metric"], r["metric"])
        iv = m.get("intervals", {})
        earlier = r["comparison"].split(" - ")[-1]
        before = (iv.get(earlier, {}).get(r["metric"]) or {}).get("mean")
        after = (iv.get(later, {}).get(r["metric"]) or {}).get("mean")
        text = (f"{r['comparison']}: {label} {fmt(before)} -> {fmt(after)} "
                f"(difference {fmt_ci({**r, 'mean': r['diff']}, sign=True)})")
        safety = r["metric"].startswith("redteam") or r["metric"] == "harmful_compliance_rate"
        items.append((text, f"worst-{later}" if (m.get("examples") or {}).get(later) and
                      (safety or r["metric"].startswith("gold")) else None))
    doc.box("Regressions: metrics significantly worse than at the previous stage", items,
            "regressions" if items else "regressions ok",
            "None: no metric got significantly worse from one stage to the next (every paired 95% interval of "
            "the difference includes 0, or the change is an improvement).")


# -- the stage table -----------------------------------------------------------------------------------------------
def _diff_cell(dd: dict | None, better: int | None) -> Cell:
    if not dd or dd.get("diff") is None:
        return Cell("n/a")
    text = fmt_ci({**dd, "mean": dd["diff"]}, sign=True)
    if not dd.get("significant") or not better:
        return Cell(text)
    good = dd["diff"] * better > 0
    return Cell(text, "better" if good else "worse", f"**{text}** ({'better' if good else 'worse'})")


def section_stages_ci(doc: Doc, m: dict) -> None:
    """Stages side by side (pipeline order), every mean with its interval, then the paired differences."""
    from .intervals import BETTER

    stages, iv, diffs = m["stages"], m.get("intervals") or {}, m.get("differences") or {}
    names = list(stages)
    keys = [k for k, _ in STAGE_ROWS if any(k in stages[n] for n in names)]
    keys += [k for k in dict.fromkeys(k for n in names for k in stages[n])
             if k not in LABELS and k not in ALIASES and isinstance(stages[names[0]].get(k), int | float)]
    keys = [k for k in keys if not (k in ALIASES and ALIASES[k] in keys)]
    doc.heading("Stages")
    rows = []
    for k in keys:
        cells = [Cell(fmt_ci(iv[n][k])) if k in iv.get(n, {}) else Cell(fmt(stages[n].get(k))) for n in names]
        rows.append([LABELS.get(k, k), *cells, *[_diff_cell(d.get(k), BETTER.get(k)) for d in diffs.values()]])
    doc.table(["metric", *names, *diffs], rows, "stages")
    if diffs:
        doc.para("Differences are later stage minus earlier, paired on the same prompts. Marked cells: the 95% "
                 "interval excludes 0 (red: worse, green: better); every other difference is within noise. "
                 "Pooled distinct-n counts n-grams over all samples together and has no interval.")
    doc.para("Gold: the world's hidden judge. Win rates compare sample k of one stage with sample k of the other "
             "on the same prompt, ties counted half. KL per sequence, estimated on the policy's own samples "
             "(k1 = sum of log-ratios; k3 >= 0). Per prompt: among the K samples of one prompt, averaged over "
             "prompts; across prompts: the first sample of every prompt.")
    stage_plots(doc, names, stages, iv)


def _err(iv: dict | None, v: float | None) -> tuple[float, float]:
    if not iv or v is None or not all(math.isfinite(iv.get(k, math.nan)) for k in ("ci_low", "ci_high")):
        return 0.0, 0.0
    return max(0.0, v - iv["ci_low"]), max(0.0, iv["ci_high"] - v)


def stage_plots(doc: Doc, names: list[str], stages: dict, iv: dict) -> None:
    plt = pyplot()
    kl_key = next((k for k in ("kl_to_ref", "kl_to_sft") if any(k in s for s in stages.values())), None)
    if kl_key and any("gold_reward_mean" in s for s in stages.values()):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for n in names:
            x, y = stages[n].get(kl_key), stages[n].get("gold_reward_mean")
            if x is None or y is None:
                continue
            ex, ey = _err(iv.get(n, {}).get(kl_key), x), _err(iv.get(n, {}).get("gold_reward_mean"), y)
            ax.errorbar([x], [y], xerr=[[ex[0]], [ex[1]]], yerr=[[ey[0]], [ey[1]]], fmt="o", capsize=3)
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(6, 5))
        ax.set_xlabel("KL to reference (nats / sequence)")
        ax.set_ylabel("gold reward")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        doc.figure("frontier.png", fig, "Gold reward against KL spent, per stage (95% intervals)")
    keys = [(k, t) for k, t in (("gold_reward_mean", "gold reward"), ("per_input/distinct_2", "distinct-2 per prompt"),
                                ("per_input/self_bleu", "self-BLEU per prompt\n(higher = less diverse)"),
                                ("redteam_bad_answer_rate", "red team: bad answers"), ("entropy", "token entropy"))
            if any(s.get(k) is not None for s in stages.values())]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.1 * len(keys), 3.2), squeeze=False)
    for ax, (k, t) in zip(axes[0], keys):
        vals = [stages[n].get(k) if stages[n].get(k) is not None else math.nan for n in names]
        errs = [_err(iv.get(n, {}).get(k), v if math.isfinite(v) else None) for n, v in zip(names, vals)]
        ax.bar(names, vals, color="#4a7", yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=4)
        ax.set_title(t, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    doc.figure("stages.png", fig, "Quality, safety and diversity by stage (95% intervals over prompts)")


# -- win rates -----------------------------------------------------------------------------------------------------
def section_win_rates_lc(doc: Doc, win_rates: dict) -> None:
    doc.heading("Win rates, raw and controlled for length")
    rows = []
    for k, w in win_rates.items():
        raw = fmt_ci(w, "win_rate") if "ci_low" in w else fmt(w.get("win_rate"))
        lc = fmt_ci({"mean": w.get("lc_win_rate"), "ci_low": w.get("lc_ci_low"), "ci_high": w.get("lc_ci_high")}) \
            if w.get("lc_win_rate") is not None else "n/a"
        kept = w.get("gain_kept")
        rows.append([k, w.get("judge", ""), Cell(raw), Cell(lc), Cell(f"{100 * kept:.0f}%" if kept is not None
                                                                      else "n/a"),
                     w.get("length_coef"), Cell(str(w.get("n", w.get("comparisons", "")))),
                     w.get("interval", "Wilson" if "lc_win_rate" not in w else "")])
    doc.table(["comparison", "judge", "win rate", "length-controlled", "edge kept", "length coefficient",
               "comparisons", "interval"], rows, "win-rates")
    doc.para("Length-controlled: logit P(win) = theta + phi tanh(dlen / sd(dlen)) fitted over the comparisons "
             "(dlen: words of the policy's answer minus the other's), reported as sigmoid(theta), the win rate "
             "at equal length (in the spirit of length-controlled AlpacaEval, Dubois et al. 2024). Edge kept: "
             "(controlled - 0.5) / (raw - 0.5), the share of the gain over an even match that is not explained by "
             "answering at greater length; a positive length coefficient means the judge prefers longer answers.")


# -- worst samples --------------------------------------------------------------------------------------------------
def section_examples(doc: Doc, examples: dict) -> None:
    """Red-team failures and the lowest-gold samples of each stage (the regression box links here)."""
    if not any(e.get("redteam_failures") or e.get("worst_gold") for e in examples.values()):
        return
    doc.heading("Failures and worst samples")
    for stage, e in examples.items():
        doc.heading(f"{stage}: red-team failures and lowest gold", 3, anchor=f"worst-{stage}")
        rows = [["red team (" + str(x.get("frame")) + ")", _q(x["prompt"]), x["response"], ""]
                for x in e.get("redteam_failures") or []]
        rows += [["lowest gold", _q(x["prompt"]), x["response"], x.get("score")] for x in e.get("worst_gold") or []]
        doc.table(["kind", "prompt", "response", "gold"], rows, "failures")


def _q(prompt) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return text.split("User:")[-1].split("\nAssistant:")[0].strip()
