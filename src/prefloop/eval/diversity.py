"""Diversity of generated text: distinct-n and self-BLEU (the cost of mode seeking, docs/EVALUATION.md).

Texts are compared as lower-cased whitespace tokens, so the numbers do not depend on a model's tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (Li et al. 2016); 0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _bleu(hyp: list[str], ref_max: list[Counter], ref_lens: list[int], max_n: int) -> float:
    if not hyp:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hyp, n))
        total = sum(counts.values())
        clipped = sum(min(c, ref_max[n - 1].get(g, 0)) for g, c in counts.items())
        # Add-one smoothing for n > 1 (Lin & Och 2004), so short texts do not all score 0.
        p = (clipped + (n > 1)) / (total + (n > 1)) if total else 1.0
        if p == 0:
            return 0.0
        log_p += math.log(p) / max_n
    closest = min(ref_lens, key=lambda r: (abs(r - len(hyp)), r)) if ref_lens else len(hyp)
    bp = 1.0 if len(hyp) >= closest else math.exp(1 - closest / len(hyp))
    return bp * math.exp(log_p)


def self_bleu(texts: list[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others as references (Zhu et al. 2018). 1 = all identical."""
    toks = [words(t) for t in texts]
    if len(toks) < 2:
        return float("nan")
    per_text = [[Counter(ngrams(t, n)) for n in range(1, max_n + 1)] for t in toks]
    scores = []
    for i, hyp in enumerate(toks):
        ref_max = []
        for n in range(max_n):
            m: Counter = Counter()
            for j, c in enumerate(per_text):
                if j != i:
                    for g, k in c[n].items():
                        if k > m[g]:
                            m[g] = k
            ref_max.append(m)
        scores.append(_bleu(hyp, ref_max, [len(t) for j, t in enumerate(toks) if j != i], max_n))
    return sum(scores) / len(scores)


def per_input_self_bleu(groups: list[list[str]], max_n: int = 4) -> float:
    """Self-BLEU among the K samples of each prompt, averaged over prompts (per-input diversity)."""
    vals = [self_bleu(g, max_n) for g in groups if len(g) >= 2]
    return sum(vals) / len(vals) if vals else float("nan")


def expectation_adjusted_distinct(token_seqs: list[list], n: int, vocab_size: int) -> float:
    """Expectation-adjusted distinct-n (EAD, Liu et al. 2022, "Rethinking and Refining the Distinct Metric",
    eq. 4): N_unique / (V (1 - ((V - 1) / V)^C)), with N_unique distinct n-grams, C all n-grams and V the
    vocabulary size. The denominator is the number of distinct items expected in C uniform draws from V,
    so unlike distinct-n the score does not fall just because the texts are longer. 0 when there are none."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    grams = [tuple(s[i:i + n]) for s in token_seqs for i in range(len(s) - n + 1)]
    if not grams:
        return 0.0
    V, C = float(vocab_size), len(grams)
    expected = V * (1.0 - ((V - 1.0) / V) ** C) if vocab_size > 1 else 1.0
    return len(set(grams)) / expected


def ead(texts: list[str], vocab_size: int, max_n: int = 5) -> float:
    """EAD averaged over n = 1..max_n on whitespace words (docs/EVALUATION.md)."""
    toks = [words(t) for t in texts]
    return sum(expectation_adjusted_distinct(toks, n, vocab_size) for n in range(1, max_n + 1)) / max_n


def diversity_report(groups: list[list[str]], vocab_size: int | None = None) -> dict[str, float]:
    """Per-input and across-input diversity of K samples per prompt (Kirk et al. 2023, sec. 4).

    per_input/*: among the K samples of each prompt, averaged over prompts (prompts with K >= 2);
    across_input/*: over the first sample of every prompt. EAD needs `vocab_size` (the word vocabulary V)."""
    out: dict[str, float] = {}
    multi = [g for g in groups if len(g) >= 2]
    firsts = [g[0] for g in groups if g]

    def avg(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    for n in (1, 2):
        out[f"per_input/distinct_{n}"] = avg([distinct_n(g, n) for g in multi])
        out[f"across_input/distinct_{n}"] = distinct_n(firsts, n) if firsts else float("nan")
    out["per_input/self_bleu"] = per_input_self_bleu(multi)
    out["across_input/self_bleu"] = self_bleu(firsts)
    if vocab_size:
        out["per_input/ead"] = avg([ead(g, vocab_size) for g in multi])
        out["across_input/ead"] = ead(firsts, vocab_size) if firsts else float("nan")
    return out
