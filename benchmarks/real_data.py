"""Real human data through every stage of prefloop: agreement statistics, tokenizer, pretraining, reward model.

    python benchmarks/real_data.py                 # the recorded run (~10 min on 2 CPU cores)
    python benchmarks/real_data.py --quick         # tiny sizes, a check that every stage runs (~1-2 min)

(a) Krippendorff's alpha per VADER domain over the individual human ratings (units = texts, labels = the
    ratings; raters are not linked across texts, which alpha does not need).
(b) A reward model trained on VADER-derived comparisons (texts split 80/20 within each domain before any pair
    is drawn, so no held-out text was seen in training or pretraining), its accuracy on held-out pairs against
    the VADER lexicon (`vaderSentiment` compound score) on the same pairs.
(c) A reward model on a split of the HH-RLHF harmless-base pairs (whole prompts held out), accuracy on the
    held-out part, against two length heuristics.
No pretrained model is downloaded: each part trains a byte-level BPE tokenizer and a small Llama from scratch on
its training texts (`prefloop.recipes.pretrain`), then a Bradley-Terry reward model from it
(`prefloop.recipes.reward`). Ties count as wrong for every method. Results go to benchmarks/real_data_results.md
(or --results) and bench-out/real_data/results.json; without the data folder (`shared/data` beside the
repository) the script says why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


@dataclass(frozen=True)
class Sizes:
    vader_train_pairs: int = 8000
    vader_test_pairs: int = 3000
    vader_train_margin: float = 0.5  # train pairs only beyond half a rating point; test pairs: every untied pair
    vader_vocab: int = 2048
    vader_len: int = 64
    hh_vocab: int = 4096
    hh_len: int = 256
    model_size: str = "demo-tiny"  # prefloop.models.SIZES: 2 layers, d=96
    pretrain_epochs: float = 1.0
    reward_epochs: float = 1.0
    reward_lr: float = 5e-4


QUICK = Sizes(vader_train_pairs=300, vader_test_pairs=200, hh_len=128, model_size="micro", pretrain_epochs=0.2,
              reward_epochs=0.5)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_corpus(path: Path, texts: list[str]) -> Path:
    from prefloop.data.jsonl import write_jsonl

    write_jsonl(path, [{"text": t} for t in texts])
    return path


def pairwise_accuracy(chosen, rejected) -> float:
    """Fraction of pairs where the chosen score is strictly higher (ties count as wrong)."""
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(chosen), 1)


def train_reward(work: Path, corpus: list[str], train, test, vocab: int, max_length: int, sizes: Sizes,
                 batch_size: int) -> dict:
    """Tokenizer + pretraining on `corpus`, then a reward model on `train`; scores of `test` pairs."""
    import torch

    from prefloop.data import encode_pair
    from prefloop.data.jsonl import write_jsonl
    from prefloop.models import RewardScorer, load_reward_model, load_tokenizer
    from prefloop.models.scoring import score_pairs
    from prefloop.recipes.pretrain import PretrainConfig, run_pretrain
    from prefloop.recipes.reward import RewardConfig, run_reward

    t0 = time.perf_counter()
    pre = run_pretrain(PretrainConfig(data=write_corpus(work / "corpus.jsonl", corpus), out=work / "pretrain",
                                      vocab_size=vocab, size=sizes.model_size, max_length=max_length,
                                      epochs=sizes.pretrain_epochs, batch_size=32, seed=0, log_every=20))
    t1 = time.perf_counter()
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "test.jsonl", test)
    rm_meta = run_reward(RewardConfig(model=str(work / "pretrain" / "model"), data=work / "train.jsonl",
                                      eval_fraction=0.0, out=work / "reward", epochs=sizes.reward_epochs,
                                      lr=sizes.reward_lr, batch_size=batch_size, max_length=max_length, seed=0,
                                      log_every=20))
    t2 = time.perf_counter()
    tok = load_tokenizer(str(work / "reward" / "model"))
    rm = load_reward_model(str(work / "reward" / "model"), tok).eval()
    enc = [encode_pair(tok, c, max_length) for c in test]
    c, r = score_pairs(RewardScorer(rm), enc, tok.pad_token_id, torch.device("cpu"))
    t3 = time.perf_counter()
    return {
        "chosen": c.tolist(), "rejected": r.tolist(),
        "parameters": sum(p.numel() for p in rm.parameters()), "vocab_size": len(tok),
        "pretrain": {"seconds": round(t1 - t0, 1), "steps": pre["metrics"]["steps"],
                     "blocks": pre["metrics"]["blocks"], "final_loss": pre["metrics"]["loss/lm"]},
        "reward": {"seconds": round(t2 - t1, 1), "steps": rm_meta["metrics"]["steps"], "train_pairs": len(train)},
        "score_seconds": round(t3 - t2, 1),
        "truncated_test_pairs": sum(max(len(a), len(b)) >= max_length for a, b in enc),
    }


# --- (a) agreement ---------------------------------------------------------------------------------------------

def part_agreement(vader_dir: Path) -> tuple[dict, dict]:
    from prefloop.data.real import find_vader_files, read_vader_texts
    from prefloop.feedback.agreement import krippendorff_alpha

    texts, rows = {}, {}
    for f in find_vader_files(vader_dir):
        t0 = time.perf_counter()
        ts = read_vader_texts(f)
        units = [list(t.ratings) for t in ts]
        n = sum(len(u) for u in units)
        rows[ts[0].domain] = {
            "texts": len(ts), "ratings": n, "raters_per_text": [min(map(len, units)), round(n / len(units), 1),
                                                                max(map(len, units))],
            "alpha_interval": krippendorff_alpha(units, "interval"),
            "alpha_ordinal": krippendorff_alpha(units, "ordinal"),
            "alpha_nominal": krippendorff_alpha(units, "nominal"),
            "file_mean_differs": sum(abs(t.file_mean - t.mean) > 1e-3 for t in ts),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        texts[ts[0].domain] = ts
        log(f"(a) {ts[0].domain}: alpha interval {rows[ts[0].domain]['alpha_interval']:.3f}")
    return rows, texts


# --- (b) VADER reward model ------------------------------------------------------------------------------------

def part_vader(texts: dict, work: Path, sizes: Sizes) -> dict:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from prefloop.data.real import vader_comparisons

    rng = random.Random(0)
    train_texts, test_texts = [], []
    for domain in sorted(texts):
        ts = list(texts[domain])
        rng.shuffle(ts)
        k = int(0.8 * len(ts))
        train_texts += ts[:k]
        test_texts += ts[k:]
    train = vader_comparisons(train_texts, margin=sizes.vader_train_margin, max_pairs=sizes.vader_train_pairs, seed=1)
    test = vader_comparisons(test_texts, margin=0.0, max_pairs=sizes.vader_test_pairs, seed=2)
    log(f"(b) {len(train_texts)} train / {len(test_texts)} test texts, {len(train)} / {len(test)} pairs")
    res = train_reward(work, [t.text for t in train_texts], train, test, sizes.vader_vocab, sizes.vader_len, sizes,
                       batch_size=32)
    t0 = time.perf_counter()
    analyzer = SentimentIntensityAnalyzer()
    compound = {t.text: analyzer.polarity_scores(t.text)["compound"] for t in test_texts}
    lex_c, lex_r = [compound[p.chosen] for p in test], [compound[p.rejected] for p in test]
    res["lexicon_seconds"] = round(time.perf_counter() - t0, 1)
    domains = sorted({p.pool for p in test})
    groups = {"all": list(range(len(test)))} | {d: [i for i, p in enumerate(test) if p.pool == d] for d in domains}
    groups["mean gap > 1"] = [i for i, p in enumerate(test) if p.margin > 1.0]
    acc = {}
    for name, idx in groups.items():
        rm_c, rm_r = [res["chosen"][i] for i in idx], [res["rejected"][i] for i in idx]
        acc[name] = {"pairs": len(idx), "reward_model": pairwise_accuracy(rm_c, rm_r),
                     "vader_lexicon": pairwise_accuracy([lex_c[i] for i in idx], [lex_r[i] for i in idx])}
    del res["chosen"], res["rejected"]
    return {"accuracy": acc, "train_texts": len(train_texts), "test_texts": len(test_texts), **res}


# --- (c) HH-RLHF harmless reward model -------------------------------------------------------------------------

def part_hh(hh_file: Path, work: Path, sizes: Sizes, quick: bool) -> dict:
    from prefloop.data.real import read_hh_rlhf
    from prefloop.data.splits import split_by_prompt

    result = read_hh_rlhf(hh_file)
    pairs = result.records[:300] if quick else result.records
    train, test = split_by_prompt(pairs, 0.2, seed=0)
    log(f"(c) {len(pairs)} pairs ({len(result.skipped)} lines skipped): {len(train)} train / {len(test)} test")
    corpus = [c.prompt + r for c in train for r in (c.chosen, c.rejected)]
    res = train_reward(work, corpus, train, test, sizes.hh_vocab, sizes.hh_len, sizes, batch_size=16)
    acc = pairwise_accuracy(res.pop("chosen"), res.pop("rejected"))
    shorter = pairwise_accuracy([-len(c.chosen) for c in test], [-len(c.rejected) for c in test])
    longer = pairwise_accuracy([len(c.chosen) for c in test], [len(c.rejected) for c in test])
    return {"pairs": len(pairs), "skipped_lines": len(result.skipped), "train_pairs": len(train),
            "test_pairs": len(test), "accuracy": {"reward_model": acc, "shorter_reply": shorter,
                                                  "longer_reply": longer}, **res}


# --- report ----------------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    s = results["sizes"]
    out = [
        "# Real human data through prefloop: results",
        "",
        f"Written by `python benchmarks/real_data.py{' --quick' if results['quick'] else ''}` on "
        f"{results['when']}: {results['machine']}, torch threads: {results['threads']}, CPU only, total wall time "
        f"{results['total_seconds']:.0f} s. The machine was shared with other jobs" + _load(results)
        + ", so times are upper bounds.",
        "",
        "## (a) Inter-rater agreement of the VADER ratings (Krippendorff's alpha)",
        "",
        "Units = texts, labels = the individual ratings on -4..+4 (Hutto & Gilbert 2014; raters anonymous and not "
        "linked across texts, which alpha does not need). `prefloop.feedback.agreement.krippendorff_alpha`.",
        "",
        "| domain | texts | ratings | raters per text (min / mean / max) | alpha interval | alpha ordinal | "
        "alpha nominal |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for d, r in results["agreement"].items():
        lo, mean, hi = r["raters_per_text"]
        out.append(f"| {d} | {r['texts']:,} | {r['ratings']:,} | {lo} / {mean} / {hi} | {r['alpha_interval']:.3f} | "
                   f"{r['alpha_ordinal']:.3f} | {r['alpha_nominal']:.3f} |")
    diff = {d: r["file_mean_differs"] for d, r in results["agreement"].items() if r["file_mean_differs"]}
    if diff:
        out += ["", "Data note: the mean column of `*_GroundTruth` differs from the mean of the listed ratings for "
                + ", ".join(f"{n} texts of {d}" for d, n in diff.items())
                + "; prefloop uses the mean of the individual ratings."]
    if "vader" in results:
        v = results["vader"]
        out += [
            "", "## (b) Reward model on VADER-derived comparisons vs the VADER lexicon", "",
            f"Texts split 80/20 within each domain ({v['train_texts']:,} / {v['test_texts']:,}); train pairs: "
            f"{v['reward']['train_pairs']:,} pairs of train texts whose mean ratings differ by more than "
            f"{s['vader_train_margin']}; test pairs: untied pairs drawn at random from the held-out texts. The lexicon "
            "baseline is `vaderSentiment`'s compound score: a rule-based model built by hand for exactly this task "
            "and evaluated by its authors on these four sets (Hutto & Gilbert 2014), so a strong baseline that needs "
            "no training data. Ties count as wrong.", "",
            "| held-out pairs | pairs | reward model | VADER lexicon |", "|---|---:|---:|---:|",
        ]
        for name, a in v["accuracy"].items():
            out.append(f"| {name} | {a['pairs']:,} | {a['reward_model']:.3f} | {a['vader_lexicon']:.3f} |")
        out += ["", _model_line(v, s["vader_len"])]
    if "hh" in results:
        h = results["hh"]
        a = h["accuracy"]
        out += [
            "", "## (c) Reward model on HH-RLHF harmless-base", "",
            f"`harmless-base-test.jsonl.gz` ({h['pairs']:,} pairs read, {h['skipped_lines']} lines skipped by "
            f"`read_hh_rlhf`), whole prompts held out: {h['train_pairs']:,} train / {h['test_pairs']:,} test pairs.",
            "", "| method | held-out accuracy |", "|---|---:|",
            f"| reward model | {a['reward_model']:.3f} |", f"| prefer the shorter reply | {a['shorter_reply']:.3f} |",
            f"| prefer the longer reply | {a['longer_reply']:.3f} |", "", _model_line(h, s["hh_len"]),
        ]
    out += ["", "These numbers show real data flowing through every stage (reader, tokenizer, pretraining, reward "
            "model, evaluation). They are not tuned results: one run, one seed, no hyperparameter search, models "
            "under a million parameters trained from scratch in minutes on the training texts alone.", ""]
    return "\n".join(out)


def _load(results: dict) -> str:
    if "load_average" not in results:
        return ""
    a, b = results["load_average"]
    return f" (1-minute load average {a:.1f} at the start, {b:.1f} at the end)"


def _model_line(r: dict, max_length: int) -> str:
    return (f"Model: Llama, {r['parameters'] / 1e6:.2f}M parameters (reward head included), byte-level BPE "
            f"vocabulary {r['vocab_size']:,}, max length {max_length} ({r['truncated_test_pairs']} test pairs "
            f"truncated). Wall time: tokenizer + pretraining {r['pretrain']['seconds']:.0f} s "
            f"({r['pretrain']['steps']} steps, final LM loss {r['pretrain']['final_loss']:.2f}), reward model "
            f"{r['reward']['seconds']:.0f} s ({r['reward']['steps']} steps), scoring {r['score_seconds']:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data directory")
    ap.add_argument("--work", type=Path, default=HERE.parent / "bench-out" / "real_data")
    ap.add_argument("--results", type=Path, default=None, help="Markdown results file "
                    "(default: benchmarks/real_data_results.md; with --quick: WORK/results.md)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that every stage runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine more threads only contend)")
    ap.add_argument("--only", default="agreement,vader,hh", help="comma list of parts")
    ap.add_argument("--report-only", action="store_true", help="rewrite the Markdown from WORK/results.json")
    args = ap.parse_args(argv)
    vader_dir, hh_file = args.data / "vader-icwsm2014", args.data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    if not vader_dir.exists() or not hh_file.exists():
        print(f"{args.data}: the VADER and HH-RLHF files are not there; nothing to do")
        return 0
    if args.report_only:
        results = json.loads((args.work / "results.json").read_text())
        md = args.results or (args.work / "results.md" if results["quick"] else HERE / "real_data_results.md")
        md.write_text(markdown(results))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    parts = set(args.only.split(","))
    t0 = time.perf_counter()
    results: dict = {"quick": args.quick, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                     "threads": args.threads, "sizes": sizes.__dict__}
    load0 = os.getloadavg()[0]
    results["agreement"], texts = part_agreement(vader_dir)
    if "vader" in parts:
        results["vader"] = part_vader(texts, args.work / "vader", sizes)
    if "hh" in parts:
        results["hh"] = part_hh(hh_file, args.work / "hh", sizes, args.quick)
    results["total_seconds"] = time.perf_counter() - t0
    results["load_average"] = [load0, os.getloadavg()[0]]
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    md = args.results or (args.work / "results.md" if args.quick else HERE / "real_data_results.md")
    md.write_text(markdown(results))
    print(markdown(results))
    log(f"results in {md} and {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
