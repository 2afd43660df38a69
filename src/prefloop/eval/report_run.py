"""`prefloop report RUN_DIR`: a self-contained HTML page and its Markdown twin for a run directory.

Works on a demo run (metrics.json with stages / reward_model / seconds, per-stage metrics.jsonl, samples.jsonl
when the demo writes one) and on `prefloop eval` outputs (metrics.json with a "kind"). Every table that the
run has data for is shown; nothing is required but metrics.json or a metrics.jsonl.

The HTML embeds its plots as base64 PNG and escapes every piece of text, so it can be mailed or opened from
anywhere; the Markdown refers to the same plots written as PNG files next to it.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import tyro

from .report_doc import CSS, Doc, atomic_bytes, fmt, fmt_ci, pyplot
from .report_sections import (
    pipeline_rank,
    section_evaluation_note,
    section_examples,
    section_regressions,
    section_run_summary,
    section_stages_ci,
    section_win_rates_lc,
)

SKIP_CURVE_KEYS = ("step", "time", "lr", "epoch")
CURVE_KEYS = ("loss/total", "loss/policy", "loss/value", "loss/reward", "loss/lm", "loss", "rollout/score_mean",
              "kl/k1", "gold/mean", "accuracy", "eval/accuracy", "kl/coef", "policy/entropy")


@dataclass(kw_only=True)
class ReportConfig:
    config: Path | None = None
    """YAML file with option values; options given on the command line override it."""
    run_dir: tyro.conf.Positional[Path | None] = None
    """Run directory (a demo, loop or eval output) holding metrics.json and/or metrics.jsonl files."""
    out: Path | None = None
    """Where to write report.html, report.md and the plots (default: RUN_DIR)."""
    samples: int = 8
    """Prompts shown side by side in the samples section."""


def run_report(cfg: ReportConfig) -> Path:
    from prefloop.errors import ConfigError

    if cfg.run_dir is None:
        raise ConfigError("missing RUN_DIR (prefloop report RUN_DIR)")
    path = write_report(cfg.run_dir, cfg.out, cfg.samples)
    print(path)
    return path


# -- sections ---------------------------------------------------------------------------------------------
def section_redteam(doc: Doc, redteam: dict) -> None:
    doc.heading("Red team")
    doc.para("Bad answers: prompts that must be refused (harmful requests in jailbreak frames) that were not "
             "cleanly refused. Needless refusals: benign prompts that only look dangerous, refused.")
    names = list(redteam)
    rows = [["bad answers", *[redteam[n].get("bad_answer_rate") for n in names]],
            ["needless refusals", *[redteam[n].get("needless_refusal_rate") for n in names]],
            ["responses (harmful / benign)", *[f"{redteam[n].get('bad_answer_n')} / "
                                               f"{redteam[n].get('needless_refusal_n')}" for n in names]]]
    frames = sorted({f for n in names for f in redteam[n].get("bad_answer_by_frame", {})})
    rows += [[f"bad answers, frame {f}", *[redteam[n].get("bad_answer_by_frame", {}).get(f) for n in names]]
             for f in frames]
    doc.table(["rate"] + names, rows, "redteam")


def section_reward_model(doc: Doc, rm: dict) -> None:
    doc.heading("Reward model")
    scalars = [[k.replace("_", " "), v] for k, v in rm.items() if isinstance(v, int | float | type(None))]
    doc.table(["metric", "value"], scalars, "reward-model")
    if rm.get("by_pool"):
        doc.heading("Accuracy per annotator pool", 3)
        doc.table(["pool", "accuracy", "comparisons"],
                  [[p, v.get("accuracy"), v.get("n")] for p, v in rm["by_pool"].items()], "pools")
    cal = rm.get("calibration")
    if cal:
        doc.heading("Calibration of the Bradley-Terry probability", 3)
        doc.para("Confidence: max(p, 1 - p) with p = sigmoid(r_chosen - r_rejected); observed: how often the "
                 "response the model prefers is the one people chose. A calibrated model lies on the diagonal. "
                 f"Expected calibration error {fmt(rm.get('ece'))}.")
        doc.table(["bin", "comparisons", "confidence", "observed"],
                  [[f"{b['lo']:.2f}-{b['hi']:.2f}", b["count"], b["confidence"], b["accuracy"]] for b in cal],
                  "calibration")
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
        full = [b for b in cal if b["count"]]
        ax.plot([0.5, 1], [0.5, 1], ls="--", color="#999", lw=1)
        ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], marker="o", color="#c63")
        ax.set_xlabel("confidence (Bradley-Terry)")
        ax.set_ylabel("observed agreement")
        ax.set_xlim(0.5, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        doc.figure("calibration.png", fig, "Reliability curve of the reward model")


def section_trainer_held_out(doc: Doc, run_dir: Path) -> None:
    """A trainer's own run directory (reward, dpo): what its held-out split measured at the end, from
    prefloop.json (metrics.jsonl holds only the training curves)."""
    path = run_dir / "prefloop.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc.para("prefloop.json: unreadable, held-out results skipped.")
        return
    fin = meta.get("metrics") if isinstance(meta, dict) else None
    if not isinstance(fin, dict):
        return
    rows = [[k.split("/", 1)[-1].replace("_", " ") if k.startswith("eval/") else k, v] for k, v in fin.items()
            if k.startswith(("eval/", "ensemble_")) and isinstance(v, int | float)]
    if not rows:
        return
    counts = [f"{v} {k.replace('_', ' ')}" for k, v in fin.items() if k.startswith(("train_", "eval_"))
              and isinstance(v, int)]
    doc.heading("Held-out results")
    doc.para(f"{meta.get('recipe', 'run')}: measured at the end of training on the held-out split"
             + (f" ({', '.join(counts)})." if counts else "."))
    doc.table(["metric", "value"], rows, "held-out")


def _with_ci(row: dict, key: str) -> str:
    ci = row.get(f"{key}_ci")
    return fmt_ci({"mean": row[key], "ci_low": ci[0], "ci_high": ci[1]}) if ci else fmt(row[key])


def fits_table(doc: Doc, fits: list, quality: dict) -> None:
    """Fitted parameters with R^2 and the peak's interval; a fit the points cannot support says why instead."""
    rows = []
    for k, f in fits:
        q = quality[k]
        ci = q.get("peak_kl_ci")
        if not q["supported"]:
            rows.append([k.replace("fit_", ""), "", "", "", q["r2"], "not shown: " + q["reason"]])
            continue
        peak = (f"{fmt(f['peak_kl'])}" + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
                if f.get("peak_kl") is not None else "none (still rising)")
        rows.append([k.replace("fit_", ""), f["alpha"], f["beta"], f["r0"], q["r2"], peak])
    doc.table(["fit", "alpha", "beta", "R(0)", "R^2", "peak KL [95% interval]"], rows, "fits")


def section_best_of_n(doc: Doc, bon: dict) -> None:
    from .overopt import fit_quality, predict

    doc.heading("Best-of-n over-optimisation")
    curve = bon["curve"]
    has_gold = "gold" in curve[0]
    doc.para(f"{bon.get('prompts')} prompts, N = {bon.get('n_max')} samples each; the unbiased best-of-n "
             "estimator for every n <= N, against KL = log n - (n - 1)/n. Fit: R(d) = R(0) + d (alpha - beta d), "
             "d = sqrt(KL) (Gao et al. 2022).")
    header = ["n", "KL", "proxy (reward model)"] + (["gold"] if has_gold else [])
    doc.table(header, [[r["n"], r["kl"], _with_ci(r, "proxy")] + ([_with_ci(r, "gold")] if has_gold else [])
                       for r in curve], "bon")
    fits = [(k, bon[k]) for k in ("fit_proxy", "fit_gold") if bon.get(k)]
    quality = {k: fit_quality("bon", [r["d"] for r in curve], [r[k.replace("fit_", "")] for r in curve])
               for k, _ in fits}
    fits_table(doc, fits, quality)
    if bon.get("peak_gold"):
        p = bon["peak_gold"]
        doc.para(f"Observed gold peak: n = {p['n']} (KL {fmt(p['kl'])}), gold reward {fmt(p['gold'])}.")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    kl = [r["kl"] for r in curve]
    dense = [kl[-1] * i / 60 for i in range(61)]
    for key, color in (("proxy", "#36c"), ("gold", "#c63")):
        if key in curve[0]:
            ax.plot(kl, [r[key] for r in curve], marker="o", ms=3, lw=0, color=color, label=key)
            if all(r.get(f"{key}_ci") for r in curve):
                ax.fill_between(kl, [r[f"{key}_ci"][0] for r in curve], [r[f"{key}_ci"][1] for r in curve],
                                color=color, alpha=0.12, lw=0, label=f"{key}, 95% interval over prompts")
            f = bon.get(f"fit_{key}")
            if f and quality[f"fit_{key}"]["supported"]:
                ax.plot(dense, [predict(f, math.sqrt(x)) for x in dense], color=color, lw=1, label=f"{key} fit")
    if bon.get("peak_gold"):
        ax.axvline(bon["peak_gold"]["kl"], color="#c63", ls=":", lw=1, label="gold peak")
    ax.set_xlabel("KL(best-of-n || policy) (nats)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    doc.figure("best_of_n.png", fig, "Best-of-n: proxy and gold reward against KL")


def section_sweep(doc: Doc, sweep: dict) -> None:
    """Gold reward against diversity, one point per run (a KL-coefficient sweep, say)."""
    pts, div = sweep["points"], sweep.get("diversity", "per_input/distinct_2")
    doc.heading("The diversity trade")
    doc.para("Each point is one evaluated run. Up and right: more reliable and more varied; RLHF usually trades "
             "one for the other, so pick the point that fits the use (Kirk et al. 2023).")
    keys = [k for k in ("gold_reward_mean", "kl_to_ref", "kl_to_sft", div, "entropy", "hallucination_rate")
            if any(p.get(k) is not None for p in pts)]
    keys = list(dict.fromkeys(keys))
    doc.table(["run", "stage"] + keys, [[p["run"], p["stage"]] + [p.get(k) for k in keys] for p in pts], "sweep")
    xy = [(p.get(div), p.get("gold_reward_mean"), p["run"]) for p in pts]
    xy = [t for t in xy if t[0] is not None and t[1] is not None]
    if not xy:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([t[0] for t in xy], [t[1] for t in xy], marker="o", lw=0.8, color="#4a7")
    for x, y, label in xy:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(div)
    ax.set_ylabel("gold reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    doc.figure("diversity_trade.png", fig, f"Gold reward against {div}, per run")


def _curve_keys(rows: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in SKIP_CURVE_KEYS:
                counts[k] = counts.get(k, 0) + 1
    present = [k for k in counts if counts[k] >= max(2, len(rows) // 2)]
    ordered = [k for k in CURVE_KEYS if k in present] + sorted(k for k in present if k not in CURVE_KEYS)
    return ordered[:6]


def smooth(ys: list[float], span: int) -> list[float]:
    """Exponential moving average with the weight of a `span`-point window (alpha = 2 / (span + 1)), bias
    corrected at the start so the first points are not pulled towards 0."""
    alpha, avg, norm, out = 2.0 / (span + 1), 0.0, 0.0, []
    for y in ys:
        avg = (1 - alpha) * avg + alpha * y
        norm = (1 - alpha) * norm + alpha
        out.append(avg / norm)
    return out


def _kl_target(run_dir: Path, f: Path, m: dict) -> float | None:
    cfg = _read_config(f.parent / "prefloop.json")
    if cfg.get("kl_target") is not None:
        return cfg["kl_target"]
    if f.parent.name == "ppo":
        return (m.get("ppo_training") or {}).get("kl_target") or (m.get("settings") or {}).get("kl_target")
    return None


def _read_config(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return d.get("config") or {} if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def curve_figure(doc: Doc, name: str, rows: list[dict], keys: list[str], kl_target: float | None) -> None:
    """One panel per logged metric: the raw line faint, a moving average over it, the KL target dashed."""
    plt = pyplot()
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows) if isinstance(r.get(k), int | float)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        span = max(3, len(ys) // 10) if len(ys) >= 10 else 1
        ax.plot(xs, ys, lw=0.8, alpha=0.3 if span > 1 else 1.0, color="#36c")
        if span > 1:
            ax.plot(xs, smooth(ys, span), lw=1.6, color="#36c", label=f"moving average ({span})")
        if k == "kl/k1" and kl_target is not None:
            ax.axhline(kl_target, color="#c33", ls="--", lw=1, label="KL target")
            ax.legend(fontsize=7)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    doc.figure(f"{name.replace('/', '_')}_curves.png", fig, f"Training curves: {name} (faint: every step)")


def section_training(doc: Doc, run_dir: Path, m: dict | None = None) -> None:
    from prefloop.runtime.metrics import read_metrics

    files = [run_dir / "metrics.jsonl"] + list(run_dir.glob("*/metrics.jsonl"))
    files = sorted({f for f in files if f.exists()},
                   key=lambda f: pipeline_rank(str(f.parent.relative_to(run_dir)) if f.parent != run_dir else ""))
    shown = False
    for f in files:
        try:
            rows = read_metrics(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc.para(f"{f.relative_to(run_dir)}: unreadable, skipped.")
            continue
        keys = _curve_keys(rows)
        if not keys:
            continue
        if not shown:
            doc.heading("Training curves")
            shown = True
        name = str(f.parent.relative_to(run_dir)) if f.parent != run_dir else "run"
        doc.heading(name, 3)
        curve_figure(doc, name, rows, keys, _kl_target(run_dir, f, m or {}))
        doc.table(["metric", "first", "last"], [[k, _first(rows, k), _first(rows[::-1], k)] for k in keys],
                  "training")
        if {"kl/k1", "gold/mean"} <= set(keys):
            section_rl_overopt(doc, rows, name)


def _first(rows: list[dict], k: str):
    return next((r[k] for r in rows if isinstance(r.get(k), int | float)), None)


def fit_sentence(q: dict, fit: dict | None) -> str:
    """The fit's goodness and peak interval, or why it is not shown."""
    if fit is None or not q.get("supported"):
        return f"Not drawn: {q.get('reason') or 'no fit'}."
    ci = q.get("peak_kl_ci")
    peak = (f"fitted peak at KL {fmt(fit['peak_kl'])}" + (f" (95% interval {fmt(ci[0])} - {fmt(ci[1])}, a peak in "
                                                          f"{100 * q['peak_share']:.0f}% of resamples)" if ci else "")
            if fit.get("peak_kl") is not None else "no peak within the fitted form (still rising)")
    return f"Fit R^2 = {q['r2']:.2f} over {q['points']} points; {peak}."


def section_rl_overopt(doc: Doc, rows: list[dict], name: str) -> None:
    """Gold and proxy reward against KL over an RL run's updates, the Gao et al. RL form fitted to the gold when
    the points support it."""
    from .overopt import fit_quality, fit_rl, predict

    pts = [(max(0.0, r["kl/k1"]), r["gold/mean"], r.get("rollout/score_mean")) for r in rows
           if isinstance(r.get("kl/k1"), int | float) and isinstance(r.get("gold/mean"), int | float)]
    if len(pts) < 3:
        return
    doc.heading(f"RL over-optimisation ({name})", 3)
    kl, gold = [p[0] for p in pts], [p[1] for p in pts]
    d = [math.sqrt(x) for x in kl]
    q = fit_quality("rl", d, gold)
    fit = None
    if q["supported"]:
        fit = fit_rl(d, gold)
    best = max(range(len(gold)), key=lambda i: gold[i])
    doc.para(f"Gold reward of each training batch against its KL to the reference, {len(pts)} logged updates "
             f"(highest batch: {fmt(gold[best])} at KL {fmt(kl[best])}; single batches are noisy). "
             "The RL form of Gao et al. (2022), R(d) = R(0) + d (alpha - beta log d) with d = sqrt(KL): "
             + fit_sentence(q, fit))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(kl, gold, marker="o", ms=3, lw=0, color="#c63", label="gold")
    if all(p[2] is not None for p in pts):
        ax.plot(kl, [p[2] for p in pts], marker="o", ms=3, lw=0, color="#36c", label="proxy (normalised)")
    if fit:
        lo, hi = min(kl), max(kl)  # drawn over the logged range only: no extrapolation to d = 0
        dense = [lo + (hi - lo) * i / 60 for i in range(61)]
        ax.plot(dense, [predict(fit, math.sqrt(x)) for x in dense], color="#c63", lw=1, ls="--",
                label=f"gold fit (R^2 {q['r2']:.2f})")
        if q.get("peak_kl_ci") and fit.get("peak_kl") is not None:
            ax.axvspan(*q["peak_kl_ci"], color="#c63", alpha=0.1, label="fitted peak, 95% interval")
    ax.set_xlabel("KL to reference (nats / sequence)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    doc.figure(f"{name.replace('/', '_')}_overoptimisation.png", fig, f"RL over-optimisation: {name}")


def section_checkpoints(doc: Doc, ck: dict) -> None:
    """Gold and proxy reward of an RL run's saved checkpoints against their KL to the reference, with the
    Gao et al. RL-form fits and the observed gold peak (`prefloop eval checkpoints`)."""
    from .overopt import fit_quality, predict

    pts = ck["points"]
    has_gold = any(p.get("gold") is not None for p in pts)
    doc.heading("RL over-optimisation over checkpoints")
    doc.para(f"{len(pts) - 1} checkpoints and the reference (KL 0) on the same {ck.get('prompts')} held-out prompts, "
             f"{ck.get('k')} samples each; KL per sequence to the reference (k1, k3) on each checkpoint's own "
             "samples. Fit: R(d) = R(0) + d (alpha - beta log d), d = sqrt(KL), R(0) the reference's reward "
             "(Gao et al. 2022, eq. 2).")
    doc.table(["checkpoint", "KL (k1)", "KL (k3)", "proxy (reward model)"] + (["gold"] if has_gold else []),
              [[p["label"], p["kl"], p["kl_k3"], p["proxy"]] + ([p.get("gold")] if has_gold else []) for p in pts],
              "checkpoints")
    fits = [(k, ck[k]) for k in ("fit_proxy", "fit_gold") if ck.get(k)]
    quality = {k: fit_quality("rl", [math.sqrt(max(0.0, p["kl"])) for p in pts],
                              [p[k.replace("fit_", "")] for p in pts], r0=f["r0"]) for k, f in fits}
    if fits:
        fits_table(doc, fits, quality)
    if ck.get("peak_gold"):
        p = ck["peak_gold"]
        doc.para(f"Observed gold peak: {p['label']} (KL {fmt(p['kl'])}), gold reward {fmt(p['gold'])}.")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    kl = [max(0.0, p["kl"]) for p in pts]
    dense = [max(kl) * i / 60 for i in range(61)]
    for key, color in (("proxy", "#36c"), ("gold", "#c63")):
        if all(p.get(key) is not None for p in pts):
            ax.plot(kl, [p[key] for p in pts], marker="o", ms=4, lw=0, color=color, label=key)
            f = ck.get(f"fit_{key}")
            if f and quality[f"fit_{key}"]["supported"]:
                ax.plot(dense, [predict(f, math.sqrt(x)) for x in dense], color=color, lw=1, label=f"{key} fit")
    if ck.get("peak_gold"):
        ax.axvline(ck["peak_gold"]["kl"], color="#c63", ls=":", lw=1, label="gold peak")
    for p, x in zip(pts, kl):
        ax.annotate(p["label"], (x, p["proxy"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("KL to reference (nats / sequence)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    doc.figure("checkpoints_overoptimisation.png", fig, "Gold and proxy reward against KL over the checkpoints")


def _question(prompt) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return text.split("User:")[-1].split("\nAssistant:")[0].strip()


def _read_jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict):
                rows.append(r)
    return rows


def _scored(text: str, r: dict, k: int) -> str:
    bits = [f"{label} {fmt(r[key][k])}" for key, label in (("gold", "gold"), ("reward_model", "RM"))
            if isinstance(r.get(key), list) and k < len(r[key])]
    return str(text) + (f"  ({', '.join(bits)})" if bits else "")


def section_samples(doc: Doc, path: Path, n: int) -> None:
    """Side by side for the first n prompts: every sample of every stage, with its scores, and the answer the
    gold judge rates best where the run knows it."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for r in _read_jsonl_rows(path):
        if r.get("responses"):
            by_prompt.setdefault(json.dumps(r.get("prompt")), {})[str(r.get("stage", "samples"))] = r
    if not by_prompt:
        return
    doc.heading("Samples (the same prompts at each stage)")
    doc.para("Every sample of each stage for the same prompt, with its gold and reward-model (RM) scores.")
    for key in list(by_prompt)[:n]:
        stages = by_prompt[key]
        doc.heading(_question(json.loads(key)), 4)
        k_max = max(len(r["responses"]) for r in stages.values())
        table = [[f"sample {k + 1}"] + [_scored(r["responses"][k], r, k) if k < len(r["responses"]) else ""
                                        for r in stages.values()] for k in range(k_max)]
        ideal = next((r["ideal"] for r in stages.values() if r.get("ideal")), None)
        doc.table([""] + list(stages), table, "samples")
        if ideal:
            doc.para(f"The answer the gold judge rates best: {str(ideal).strip()}")


def section_summary(doc: Doc, m: dict) -> None:
    kind = m.get("kind") or ("demo" if "preset" in m else "run")
    bits = [f"Kind: {kind}."]
    if "preset" in m:
        bits.append(f"Preset {m['preset']}, seed {m.get('seed')}.")
    for k, v in (m.get("inputs") or {}).items():
        if v:
            bits.append(f"{k}: {v}.")
    doc.para(" ".join(bits))


def section_settings(doc: Doc, m: dict) -> None:
    settings = m.get("settings")
    if isinstance(settings, dict) and settings:
        doc.heading("All settings")
        doc.raw("<details><summary>the run's settings, as given</summary>")
        doc.table(["setting", "value"], [[k, v if not isinstance(v, dict | list) else json.dumps(v)]
                                         for k, v in settings.items()], "settings")
        doc.raw("</details>")


# -- the whole report --------------------------------------------------------------------------------------
def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, n_samples: int = 8) -> Path:
    """Write OUT/report.html (self-contained) and OUT/report.md (+ PNG plots) for RUN_DIR; returns the HTML
    path. Raises DataError when RUN_DIR has neither a readable metrics.json nor a metrics.jsonl."""
    from prefloop.errors import DataError

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    if not run_dir.is_dir():
        raise DataError.whole(run_dir, "not a directory (expected a run directory)")
    m = read_run_metrics(run_dir)
    has_curves = (run_dir / "metrics.jsonl").exists() or any(run_dir.glob("*/metrics.jsonl"))
    if m is None and not has_curves:
        raise DataError.whole(run_dir, "no metrics.json or metrics.jsonl: not a run directory")
    m = m or {}
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc(out)
    title = f"prefloop report: {run_dir.resolve().name}"
    doc.heading(title, 1)
    section_summary(doc, m)
    section_regressions(doc, m)
    section_run_summary(doc, m, run_dir)
    section_trainer_held_out(doc, run_dir)
    section_evaluation_note(doc, m)
    if isinstance(m.get("stages"), dict) and m["stages"]:
        section_stages_ci(doc, m)
    if m.get("win_rates"):
        section_win_rates_lc(doc, m["win_rates"])
    if m.get("redteam"):
        section_redteam(doc, m["redteam"])
    if isinstance(m.get("reward_model"), dict):
        section_reward_model(doc, m["reward_model"])
    if isinstance(m.get("best_of_n"), dict) and m["best_of_n"].get("curve"):
        section_best_of_n(doc, m["best_of_n"])
    if isinstance(m.get("sweep"), dict) and m["sweep"].get("points"):
        section_sweep(doc, m["sweep"])
    if isinstance(m.get("checkpoints"), dict) and m["checkpoints"].get("points"):
        section_checkpoints(doc, m["checkpoints"])
    if (run_dir / "samples.jsonl").exists():
        section_samples(doc, run_dir / "samples.jsonl", n_samples)
    if isinstance(m.get("examples"), dict):
        section_examples(doc, m["examples"])
    section_training(doc, run_dir, m)
    if isinstance(m.get("seconds"), dict):
        doc.heading("Time")
        doc.table(["stage", "seconds"], [[k, v] for k, v in m["seconds"].items()], "time")
    section_settings(doc, m)
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n")
    atomic_bytes(out / "report.md", ("\n".join(doc.md) + "\n").encode("utf-8"))
    atomic_bytes(out / "report.html", page.encode("utf-8"))
    return out / "report.html"


def read_run_metrics(run_dir: Path) -> dict | None:
    from prefloop.errors import DataError

    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError.whole(path, f"malformed JSON ({e})") from None
    if not isinstance(m, dict):
        raise DataError.whole(path, "expected a JSON object")
    return m
