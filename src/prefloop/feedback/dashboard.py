"""The admin dashboard's numbers: progress, agreement statistics, per-annotator quality, per-pool breakdown and
annotation time. The statistics themselves are those of `agreement` (one implementation for the app, the
benchmarks and the tests); this module only gathers the labels.

Labels compared: pairwise, the preferred response index or "tie" (nominal, strength ignored); rating, the
overall rating (nominal, ordinal and interval alpha); ranking, the rank vector (Kendall's tau-b between
annotators; agreement with gold and majority is an exact match of the whole ranking). Demonstrations have no
agreement statistic.
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
from .db import Item, Judgment, Project, User

MIN_SHARED_FOR_COHEN = 2


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
    rows = s.execute(select(Judgment.item_id, Judgment.value, Judgment.duration_ms, User.username, Item.is_gold)
                     .join(User, User.id == Judgment.user_id).join(Item, Item.id == Judgment.item_id)
                     .where(Judgment.project_id == project.id))
    units: dict[int, dict[str, Any]] = defaultdict(dict)
    gold_units: dict[int, dict[str, Any]] = defaultdict(dict)
    times: dict[str, list[int]] = defaultdict(list)
    for item_id, value, ms, name, is_gold in rows:
        (gold_units if is_gold else units)[item_id][name] = label_of(t, value)
        if ms is not None:
            times[name].append(ms)
    gold_ref = {}
    if gold_units:
        for item_id, gold in s.execute(select(Item.id, Item.gold).where(Item.id.in_(list(gold_units)))):
            gold_ref[item_id] = gold_label(t, gold)
    names = {n for u in (*units.values(), *gold_units.values()) for n in u}
    users = {u.username: u for u in s.scalars(select(User).where(User.username.in_(names)))} if names else {}
    n_judgments = sum(len(u) for u in units.values())
    target = n_items * project.overlap
    all_times = [x for ts in times.values() for x in ts]
    annotators = _annotator_rows(units, gold_units, gold_ref, users, times)
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
                     "percent": round(100 * n_judgments / target, 1) if target else 0.0},
        "time": {"median_s": _num(statistics.median(all_times) / 1000) if all_times else None,
                 "p90_s": _num(sorted(all_times)[int(0.9 * (len(all_times) - 1))] / 1000) if all_times else None},
        "agreement": agreement_stats(t, units, project.overlap),
        "annotators": annotators, "pools": pools,
    }
