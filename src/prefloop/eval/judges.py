"""Win rates under a named judge from a file of people's (or any judge's) pairwise judgments.

A judgment file is comparisons JSONL (`prefloop.data.read_comparisons`) whose `chosen` and `rejected` are
two policies' responses to the same prompt. Which policy wrote which side is read, in this order, from
`meta.chosen_policy` / `meta.rejected_policy`, or from a map of response text to policy (the samples the
comparisons were built from). A judgment with `meta.tie` true (or `chosen == rejected`) counts half.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .compare import wilson_interval


def _text(x) -> str:
    if isinstance(x, list):  # messages: the final assistant content
        return str(x[-1].get("content", "")) if x and isinstance(x[-1], dict) else ""
    return str(x)


def _key(prompt, response) -> tuple[str, str]:
    return (" ".join(_text(prompt).split()), " ".join(_text(response).split()))


def source_map(samples: dict[str, tuple[Sequence, Sequence[Sequence[str]]]]) -> dict[tuple[str, str], set[str]]:
    """{(prompt, response text): {policies that wrote it}} from {policy: (prompts, responses[i][k])}."""
    out: dict[tuple[str, str], set[str]] = {}
    for name, (prompts, responses) in samples.items():
        for p, row in zip(prompts, responses):
            for r in row:
                out.setdefault(_key(p, r), set()).add(name)
    return out


def _sides(rec, sources) -> tuple[str | None, str | None]:
    meta = rec.meta or {}
    if "chosen_policy" in meta and "rejected_policy" in meta:
        return str(meta["chosen_policy"]), str(meta["rejected_policy"])
    if sources is None:
        return None, None
    c = sources.get(_key(rec.prompt, rec.chosen), set())
    r = sources.get(_key(rec.prompt, rec.rejected), set())
    if len(c) == 1 and len(r) == 2 and c <= r:  # the other side was written by both: it is the other one
        r = r - c
    elif len(r) == 1 and len(c) == 2 and r <= c:
        c = c - r
    return (next(iter(c)) if len(c) == 1 else None), (next(iter(r)) if len(r) == 1 else None)


def judged_win_rate(records: Sequence, policy: str, reference: str,
                    sources: dict[tuple[str, str], set[str]] | None = None, z: float = 1.96,
                    path: str | Path = "judgments") -> dict:
    """Win rate of `policy` against `reference` over the judgments between the two, ties counted half, with
    the Wilson score interval (Wilson 1927; ties counted as half a win inside it too) when every judgment is of
    its own prompt, else a bootstrap over prompts; and the win rate controlled for length
    (`stats.length_controlled_win_rate`, lengths in words of the two judged responses).

    Judgments between other policies, or whose sides cannot be attributed (a response in neither's
    samples, or both responses written by both policies), are counted under `skipped`, not guessed; when
    only one side was written by both, it belongs to the policy that did not write the other side."""
    from prefloop.errors import DataError

    wins, n, skipped = 0.0, 0, 0
    by_prompt: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        c, r = _sides(rec, sources)
        if {c, r} != {policy, reference}:
            skipped += 1
            continue
        tie = bool((rec.meta or {}).get("tie")) or _text(rec.chosen) == _text(rec.rejected)
        y = 0.5 if tie else float(c == policy)
        wins += y
        n += 1
        mine, other = (rec.chosen, rec.rejected) if c == policy else (rec.rejected, rec.chosen)
        row = by_prompt.setdefault(_key(rec.prompt, "")[0], ([], []))
        row[0].append(y)
        row[1].append(float(len(_text(mine).split()) - len(_text(other).split())))
    if n == 0:
        raise DataError.whole(path, f"no judgment compares '{policy}' with '{reference}' "
                                    f"({skipped} judgments could not be attributed to the two policies)")
    rate = wins / n
    lo, hi = wilson_interval(rate, n, z)
    out = {"win_rate": rate, "ci_low": lo, "ci_high": hi, "n": n, "skipped": skipped, "judge": "file",
           "interval": "Wilson (judgments independent)", "prompts": len(by_prompt)}
    if len(by_prompt) >= 2:
        # Several judgments of one prompt are not independent: when there are such repeats, the bootstrap
        # over prompts gives the honest interval (and the length control needs it anyway).
        from .stats import length_controlled_win_rate

        lc = length_controlled_win_rate([v[0] for v in by_prompt.values()], [v[1] for v in by_prompt.values()])
        out.update({k: lc[k] for k in ("lc_win_rate", "lc_ci_low", "lc_ci_high", "length_coef", "gain_kept")})
        if len(by_prompt) < n:
            out.update({"ci_low": lc["ci_low"], "ci_high": lc["ci_high"], "interval": "bootstrap over prompts",
                        "wilson": [lo, hi]})
    return out
