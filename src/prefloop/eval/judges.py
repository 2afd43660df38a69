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
    """Win rate of `policy` against `reference` over the judgments between the two, ties counted half,
    with the Wilson score interval (Wilson 1927; ties counted as half a win inside it too).

    Judgments between other policies, or whose sides cannot be attributed (a response in neither's
    samples, or both responses written by both policies), are counted under `skipped`, not guessed; when
    only one side was written by both, it belongs to the policy that did not write the other side."""
    from prefloop.data import DataError

    wins, n, skipped = 0.0, 0, 0
    for rec in records:
        c, r = _sides(rec, sources)
        if {c, r} != {policy, reference}:
            skipped += 1
            continue
        tie = bool((rec.meta or {}).get("tie")) or _text(rec.chosen) == _text(rec.rejected)
        wins += 0.5 if tie else float(c == policy)
        n += 1
    if n == 0:
        raise DataError.whole(path, f"no judgment compares '{policy}' with '{reference}' "
                                    f"({skipped} judgments could not be attributed to the two policies)")
    rate = wins / n
    lo, hi = wilson_interval(rate, n, z)
    return {"win_rate": rate, "ci_low": lo, "ci_high": hi, "n": n, "skipped": skipped, "judge": "file"}
