"""The admin dashboard's numbers: progress, agreement statistics, per-annotator quality, per-pool breakdown and
annotation time. The statistics themselves are those of `agreement` (one implementation for the app, the
benchmarks and the tests); this module only gathers the labels.

Labels compared: pairwise, the preferred response index or "tie" (nominal, strength ignored); rating, the
overall rating (nominal, ordinal and interval alpha); ranking, the rank vector (Kendall's tau-b between
annotators; agreement with gold and majority is an exact match of the whole ranking). Demonstrations have no
agreement statistic.

Each (annotator, item) has one stored answer, which an edit replaces: every statistic here uses each
annotator's latest answer. Annotators are flagged automatically (`FLAGS`) when their median answer time is too
short to have read the item, when they disagree with gold items, or when they nearly always pick the same
display position (the left response, the first shown, the same rating), a sign of clicking through.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import agreement as ag
from . import service
from .db import Assignment, Item, Judgment, Project, User

MIN_SHARED_FOR_COHEN = 2

# What the dashboard calls each number, and what it means (the keys are those of the stats API).
METRICS = {
    "items_with_2plus": ("Items with 2 or more answers", "the items the agreement statistics are computed on"),
    "raw_agreement": ("Raw agreement", "share of pairs of answers to the same item that are equal; counts "
                      "agreement by chance too"),
    "fleiss_kappa": ("Fleiss' kappa", "agreement beyond chance over items with all their answers: 1 perfect, "
                     "0 chance level, below 0 worse than chance"),
    "krippendorff_alpha_nominal": ("Krippendorff's alpha (categories)", "agreement beyond chance, missing "
                                   "answers allowed: 1 perfect, 0 chance; 0.8 or more is commonly taken as "
                                   "reliable, 0.67 as the least for tentative conclusions"),
    "krippendorff_alpha_ordinal": ("Krippendorff's alpha (ordered)", "as above, ratings further apart in rank "
                                   "count as a larger disagreement"),
    "krippendorff_alpha_interval": ("Krippendorff's alpha (numeric)", "as above, disagreement is the squared "
                                    "difference of the ratings"),
    "mean_cohen_kappa": ("Mean Cohen's kappa", "agreement beyond chance of each pair of annotators sharing 2 "
                         "or more items, averaged over the pairs"),
    "mean_kendall_tau": ("Mean Kendall's tau", "rank correlation of two rankings of the same item, averaged: "
                         "1 same order, 0 unrelated, -1 reversed"),
    "gold_agreement": ("Gold agreement", "share of gold items (known answer) answered with the gold answer"),
    "majority_agreement": ("Majority agreement", "share of items where the annotator gave the answer of the "
                           "majority of the others (items where the others have a majority)"),
    "peer_agreement": ("Peer agreement", "share of the other annotators' answers to the same items that equal "
                       "this annotator's"),
    "median_time_s": ("Median time (s)", "median seconds from showing an item to its answer"),
    "same_side": ("Same side", "share of answers with the annotator's most chosen display position: the "
                  "response shown first/second (pairwise), the one ranked first (ranking), the rating given"),
    "skips": ("Skips", "items the annotator passed on, with a reason"),
}
FAST_SECONDS = {"pairwise": 3.0, "ranking": 5.0, "rating": 3.0, "demonstration": 10.0}
"""A median answer time below this (seconds) is too short to read the item."""
FAST_FRACTION = 0.25
"""... as is a median below this fraction of the other annotators' median."""
MIN_TIMED, MIN_GOLD, GOLD_BELOW, MIN_SIDE, SIDE_ABOVE = 3, 3, 0.5, 10, 0.9
FLAG_TEXTS = {
    "too_fast": "too fast",
    "gold": "disagrees with gold",
    "one_side": "always the same side",
}


def label_of(task_type: str, value: dict) -> Any:
    """The hashable label of a stored judgment value (None for demonstrations)."""
    if task_type == "pairwise":
        return "tie" if value["preferred"] is None else value["preferred"]
    if task_type == "rating":
        return value["rating"]
    if task_type == "ranking":
        return tuple(value["ranks"])
    return None


def gold_label(task_type: str, gold: dict) -> Any:
    return label_of(task_type, gold if task_type != "pairwise" else {"preferred": gold["preferred"]})


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _safe(fn, *args, **kw) -> float | None:
    try:
        return _num(fn(*args, **kw))
    except (ValueError, ZeroDivisionError):
        return None


def _majority(labels: list) -> Any:
    """The most frequent label if it is unique, else None."""
    if not labels:
        return None
    (top, n), *rest = Counter(labels).most_common(2) + [(None, 0)]
    return top if n > rest[0][1] else None


def agreement_stats(task_type: str, units: dict[int, dict[str, Any]], overlap: int) -> dict:
    """Inter-annotator agreement over units {item: {annotator: label}}, for the items with >= 2 labels."""
    multi = {i: u for i, u in units.items() if len(u) >= 2}
    out: dict[str, Any] = {"items_with_2plus": len(multi)}
    if task_type == "demonstration" or not multi:
        return out
    if task_type == "ranking":
        out["mean_kendall_tau"] = _safe(ag.mean_pairwise_kendall_tau, [list(u.values()) for u in multi.values()])
        out["raw_agreement"] = _safe(ag.raw_agreement, [list(u.values()) for u in multi.values()])
        return out
    lists = [list(u.values()) for u in multi.values()]
    out["raw_agreement"] = _safe(ag.raw_agreement, lists)
    full = [x for x in lists if len(x) == overlap]
    out["fleiss_kappa"] = _safe(ag.fleiss_kappa, full) if overlap >= 2 and full else None
    out["krippendorff_alpha_nominal"] = _safe(ag.krippendorff_alpha, lists, "nominal")
    if task_type == "rating":
        out["krippendorff_alpha_ordinal"] = _safe(ag.krippendorff_alpha, lists, "ordinal")
        out["krippendorff_alpha_interval"] = _safe(ag.krippendorff_alpha, lists, "interval")
    out["mean_cohen_kappa"] = _mean_cohen(multi)
    return out


def _mean_cohen(units: dict[int, dict[str, Any]]) -> float | None:
    """Mean Cohen's kappa over annotator pairs sharing >= MIN_SHARED_FOR_COHEN items (undefined pairs skipped)."""
    by_pair: dict[tuple[str, str], list[tuple[Any, Any]]] = defaultdict(list)
    for u in units.values():
        for a, b in combinations(sorted(u), 2):
            by_pair[(a, b)].append((u[a], u[b]))
    kappas = []
    for pairs in by_pair.values():
        if len(pairs) >= MIN_SHARED_FOR_COHEN:
            k = _safe(ag.cohen_kappa, [p[0] for p in pairs], [p[1] for p in pairs])
            if k is not None:
                kappas.append(k)
    return _num(statistics.fmean(kappas)) if kappas else None


def _annotator_rows(units: dict[int, dict[str, Any]], gold_units: dict[int, dict[str, Any]],
                    gold_ref: dict[int, Any], users: dict[str, User], times: dict[str, list[int]]) -> list[dict]:
    rows = []
    for name, user in sorted(users.items()):
        own = {i: u[name] for i, u in units.items() if name in u}
        loo_majority = {}
        peers_equal, peers_total = 0, 0
        for i, label in own.items():
            others = [v for k, v in units[i].items() if k != name]
            m = _majority(others) if len(others) >= 2 else None
            if m is not None:
                loo_majority[i] = m
            peers_equal += sum(v == label for v in others)
            peers_total += len(others)
        gold_own = {i: u[name] for i, u in gold_units.items() if name in u}
        ts = times.get(name, [])
        rows.append({
            "annotator": name, "pool": user.pool, "judgments": len(own), "gold_judged": len(gold_own),
            "gold_agreement": _safe(ag.agreement_with_reference, gold_own, gold_ref) if gold_own else None,
            "majority_agreement": _safe(ag.agreement_with_reference, own, loo_majority) if loo_majority else None,
            "peer_agreement": _num(peers_equal / peers_total) if peers_total else None,
            "median_time_s": _num(statistics.median(ts) / 1000) if ts else None,
        })
    return rows


def project_stats(s: Session, project: Project) -> dict:
    """Everything the dashboard shows, as JSON-ready numbers (None where a statistic is undefined)."""
    t = project.task_type
    n_items = s.scalar(select(func.count(Item.id)).where(Item.project_id == project.id, Item.is_gold.is_(False))) or 0
    n_gold = s.scalar(select(func.count(Item.id)).where(Item.project_id == project.id, Item.is_gold.is_(True))) or 0
    rows = s.execute(select(Judgment.item_id, Judgment.value, Judgment.duration_ms, User.username, Item.is_gold,
                            Assignment.order)
                     .join(User, User.id == Judgment.user_id).join(Item, Item.id == Judgment.item_id)
                     .join(Assignment, Assignment.id == Judgment.assignment_id)
                     .where(Judgment.project_id == project.id).order_by(Judgment.id))
    units: dict[int, dict[str, Any]] = defaultdict(dict)
    gold_units: dict[int, dict[str, Any]] = defaultdict(dict)
    times: dict[str, list[int]] = defaultdict(list)
    sides: dict[str, list[Any]] = defaultdict(list)
    for item_id, value, ms, name, is_gold, order in rows:
        (gold_units if is_gold else units)[item_id][name] = label_of(t, value)
        if ms is not None:
            times[name].append(ms)
        side = shown_side(t, order, value)
        if side is not None:
            sides[name].append(side)
    skips = _skips(s, project)
    gold_ref = {}
    if gold_units:
        for item_id, gold in s.execute(select(Item.id, Item.gold).where(Item.id.in_(list(gold_units)))):
            gold_ref[item_id] = gold_label(t, gold)
    names = {n for u in (*units.values(), *gold_units.values()) for n in u} | set(skips)
    users = {u.username: u for u in s.scalars(select(User).where(User.username.in_(names)))} if names else {}
    n_judgments = sum(len(u) for u in units.values())
    target = n_items * project.overlap
    all_times = [x for ts in times.values() for x in ts]
    annotators = _annotator_rows(units, gold_units, gold_ref, users, times)
    _add_flags(t, annotators, times, sides, skips)
    pools = {}
    for pool in sorted({u.pool for u in users.values()}):
        members = {n for n, u in users.items() if u.pool == pool}
        pool_units = {i: {n: v for n, v in u.items() if n in members} for i, u in units.items()}
        pool_rows = [r for r in annotators if r["pool"] == pool]
        gold_hits = [(r["gold_agreement"], r["gold_judged"]) for r in pool_rows if r["gold_agreement"] is not None]
        pools[pool] = {
            "annotators": len(members), "judgments": sum(r["judgments"] for r in pool_rows),
            "gold_agreement": _num(sum(a * n for a, n in gold_hits) / sum(n for _, n in gold_hits))
            if gold_hits else None,
            "agreement": agreement_stats(t, pool_units, project.overlap),
        }
    return {
        "project": project.name, "task_type": t, "overlap": project.overlap,
        "progress": {"items": n_items, "gold_items": n_gold, "target_judgments": target, "judgments": n_judgments,
                     "complete_items": sum(len(u) >= project.overlap for u in units.values()),
                     "percent": round(100 * n_judgments / target, 1) if target else 0.0,
                     "available_items": service.queue_depth(s, project),
                     "skips": sum(len(v) for v in skips.values())},
        "time": {"median_s": _num(statistics.median(all_times) / 1000) if all_times else None,
                 "p90_s": _num(sorted(all_times)[int(0.9 * (len(all_times) - 1))] / 1000) if all_times else None},
        "agreement": agreement_stats(t, units, project.overlap),
        "annotators": annotators, "pools": pools,
    }


def shown_side(task_type: str, order: list[int], value: dict) -> Any:
    """The display position an answer favoured: pairwise, 0 (A) or 1 (B), None for a tie; ranking, the position
    of the first response ranked best; rating, the rating; demonstrations, None."""
    if task_type == "pairwise":
        return None if value["preferred"] is None else order.index(value["preferred"])
    if task_type == "ranking":
        shown = [value["ranks"][i] for i in order]
        return shown.index(min(shown))
    return value["rating"] if task_type == "rating" else None


def _skips(s: Session, project: Project) -> dict[str, list[str]]:
    rows = s.execute(select(User.username, Assignment.skip_reason).join(User, User.id == Assignment.user_id)
                     .where(Assignment.project_id == project.id, Assignment.skip_reason.is_not(None))
                     .order_by(Assignment.id))
    out: dict[str, list[str]] = defaultdict(list)
    for name, reason in rows:
        out[name].append(reason)
    return out


def _add_flags(task_type: str, rows: list[dict], times: dict[str, list[int]], sides: dict[str, list[Any]],
               skips: dict[str, list[str]]) -> None:
    """Add `same_side`, `skips` and `flags` [{code, detail}] to each annotator's row."""
    for r in rows:
        name, flags = r["annotator"], []
        median = r["median_time_s"]
        others = [x for n, ts in times.items() if n != name for x in ts]
        slow_enough = FAST_SECONDS[task_type]
        if others:
            slow_enough = max(slow_enough, FAST_FRACTION * statistics.median(others) / 1000)
        if median is not None and len(times.get(name, [])) >= MIN_TIMED and median < slow_enough:
            flags.append({"code": "too_fast", "detail": f"median {median:g} s per item, below {slow_enough:.3g} s"})
        if r["gold_judged"] >= MIN_GOLD and r["gold_agreement"] is not None and r["gold_agreement"] < GOLD_BELOW:
            flags.append({"code": "gold", "detail": f"{r['gold_agreement']:.0%} of {r['gold_judged']} gold items "
                                                    f"right, below {GOLD_BELOW:.0%}"})
        own = sides.get(name, [])
        r["same_side"] = _num(Counter(own).most_common(1)[0][1] / len(own)) if own else None
        if len(own) >= MIN_SIDE and r["same_side"] > SIDE_ABOVE:
            top = Counter(own).most_common(1)[0][0]
            what = {"pairwise": f"response {'AB'[top]}", "ranking": f"shown response {top + 1} ranked first",
                    "rating": f"rating {top}"}[task_type]
            flags.append({"code": "one_side", "detail": f"{what} in {r['same_side']:.0%} of {len(own)} answers"})
        r["skips"] = len(skips.get(name, []))
        r["flags"] = flags


def answer_text(task_type: str, order: list[int], value: dict) -> str:
    """An answer in words, with response numbers as stored (0-based) and where the annotator saw them."""
    if task_type == "pairwise":
        if value["preferred"] is None:
            return "tie"
        pos = order.index(value["preferred"])
        return (f"response {value['preferred']} better (strength {value['strength']} of 3; "
                f"shown as {'AB'[pos]})")
    if task_type == "ranking":
        best_first = sorted(range(len(value["ranks"])), key=lambda i: value["ranks"][i])
        return "ranks " + ", ".join(f"{i}: {value['ranks'][i]}" for i in best_first)
    if task_type == "rating":
        extra = [f"{k} {v}" for k, v in value.get("criteria", {}).items()] + list(value.get("flags", []))
        return f"rating {value['rating']}" + (f" ({'; '.join(extra)})" if extra else "")
    text = " ".join(value["text"].split())
    return text[:120] + ("..." if len(text) > 120 else "")


def _snippet(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else " / ".join(str(m.get("content", "")) for m in prompt)
    text = " ".join(text.split())
    return text[:100] + ("..." if len(text) > 100 else "")


def annotator_detail(s: Session, project: Project, username: str) -> dict:
    """One annotator's page: their dashboard row (with flags) and every answer and skip, oldest first."""
    row = next((r for r in project_stats(s, project)["annotators"] if r["annotator"] == username), None)
    if row is None:
        raise service.not_found(f"annotator {username!r} in project {project.name!r}")
    t = project.task_type
    answers = []
    for j, item, order in s.execute(
            select(Judgment, Item, Assignment.order).join(Item, Item.id == Judgment.item_id)
            .join(Assignment, Assignment.id == Judgment.assignment_id).join(User, User.id == Judgment.user_id)
            .where(Judgment.project_id == project.id, User.username == username).order_by(Judgment.id)):
        gold = None
        if item.is_gold and item.gold is not None and t != "demonstration":
            gold = label_of(t, j.value) == gold_label(t, item.gold)
        answers.append({"item": item.external_id, "prompt": _snippet(item.prompt), "gold": gold,
                        "answer": answer_text(t, order, j.value), "edited": j.edited_at is not None,
                        "time_s": None if j.duration_ms is None else round(j.duration_ms / 1000, 2)})
    rows = s.execute(
        select(Item.external_id, Item.prompt, Assignment.skip_reason).join(Item, Item.id == Assignment.item_id)
        .join(User, User.id == Assignment.user_id)
        .where(Assignment.project_id == project.id, User.username == username, Assignment.skip_reason.is_not(None))
        .order_by(Assignment.id))
    skipped = [{"item": ext, "prompt": _snippet(prompt), "reason": skip_reason_text(reason)}
               for ext, prompt, reason in rows]
    return {"row": row, "answers": answers, "skipped": skipped}


def skip_reason_text(stored: str) -> str:
    """A stored skip reason ("key" or "key: note") in words."""
    key, _, note = stored.partition(": ")
    label = service.SKIP_REASONS.get(key, key)
    return f"{label}: {note}" if note else label
