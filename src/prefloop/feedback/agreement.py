"""Inter-annotator agreement: raw agreement, Cohen's and Fleiss' kappa, Krippendorff's alpha, Kendall's tau.

Pure Python + numpy (Kendall's tau is scipy's), no web imports, so the admin dashboard, the benchmarks and
the tests share one implementation. docs/EVALUATION.md lists why the others are the project's own.

Conventions:
- A *unit* is the list of labels one item received (one label per annotator who judged it). Labels are any
  hashable values (strings, ints, floats); `None` in a unit means "no label" and is dropped where the
  statistic allows missing data (`raw_agreement`, `krippendorff_alpha`).
- A statistic that the data cannot determine returns `nan`: no pairable data at all, or no variation (every
  label the same, so chance agreement is already perfect and agreement beyond chance is 0/0, Krippendorff
  2011, sec. "Computing"). Perfect agreement with some variation gives exactly 1.0.
- Malformed input (sequences of different lengths, units of unequal size for Fleiss' kappa, unhashable or
  non-numeric labels where numbers are needed, an unknown level) raises `ValueError` with one line saying
  what is wrong and where.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")
NAN = float("nan")


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _check_hashable(x: Any, where: str) -> None:
    if not isinstance(x, Hashable):
        raise ValueError(f"{where}: labels must be hashable values (str, int, float), got {type(x).__name__}")


def _units(units: Iterable[Sequence[Any]], *, drop_missing: bool) -> list[list[Any]]:
    """Validate units; with `drop_missing`, remove `None`/NaN labels (otherwise they are an error)."""
    if isinstance(units, str | bytes) or not isinstance(units, Iterable):
        raise ValueError(f"units must be a list of lists of labels, got {type(units).__name__}")
    out = []
    for i, unit in enumerate(units):
        if isinstance(unit, str | bytes | Mapping) or not isinstance(unit, Iterable):
            raise ValueError(f"unit {i}: expected a list of labels, got {type(unit).__name__}")
        kept = []
        for j, x in enumerate(unit):
            if _is_missing(x):
                if drop_missing:
                    continue
                raise ValueError(f"unit {i} label {j}: missing label (None/NaN) is not allowed here")
            _check_hashable(x, f"unit {i} label {j}")
            kept.append(x)
        out.append(kept)
    return out


def raw_agreement(units: Iterable[Sequence[Any]]) -> float:
    """Fraction of agreeing pairs: over all units, the pairs of labels within a unit that are equal, divided by
    all pairs within units (pooled, so a unit with more labels weighs more; with equal numbers of labels per
    unit this is Fleiss' (1971) mean observed agreement P-bar). Units with fewer than 2 labels are ignored;
    `nan` when no unit has 2 labels."""
    agree = pairs = 0
    for unit in _units(units, drop_missing=True):
        m = len(unit)
        if m < 2:
            continue
        counts: dict[Any, int] = {}
        for x in unit:
            counts[x] = counts.get(x, 0) + 1
        agree += sum(c * (c - 1) // 2 for c in counts.values())
        pairs += m * (m - 1) // 2
    return agree / pairs if pairs else NAN


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's (1960) kappa for two annotators who labelled the same items: kappa = (p_o - p_e) / (1 - p_e),
    p_o the observed fraction of equal labels, p_e = sum_k p_a(k) p_b(k) the agreement expected from each
    annotator's own label frequencies (Cohen 1960, eq. 1). `nan` for no items or when p_e = 1 (both annotators
    gave one and the same label throughout)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs two label sequences of equal length, got {len(a)} and {len(b)}")
    for name, seq in (("a", a), ("b", b)):
        for i, x in enumerate(seq):
            if _is_missing(x):
                raise ValueError(f"{name}[{i}]: missing label (None/NaN); keep only items both annotators labelled")
            _check_hashable(x, f"{name}[{i}]")
    n = len(a)
    if n == 0:
        return NAN
    p_o = sum(x == y for x, y in zip(a, b)) / n
    freq_a: dict[Any, int] = {}
    freq_b: dict[Any, int] = {}
    for x, y in zip(a, b):
        freq_a[x] = freq_a.get(x, 0) + 1
        freq_b[y] = freq_b.get(y, 0) + 1
    p_e = sum(c * freq_b.get(k, 0) for k, c in freq_a.items()) / (n * n)
    if math.isclose(p_e, 1.0):
        return NAN
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(units: Iterable[Sequence[Any]]) -> float:
    """Fleiss' (1971) kappa for N items each labelled by the same number n >= 2 of annotators (not necessarily
    the same people). With n_ij the number of labels of category j on item i:
    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P-bar = mean_i P_i, p_j = sum_i n_ij / (N n), P_e = sum_j p_j^2,
    kappa = (P-bar - P_e) / (1 - P_e) (Fleiss 1971, eqs. 2-9). `nan` for no items or when P_e = 1."""
    us = _units(units, drop_missing=False)
    if not us:
        return NAN
    n = len(us[0])
    for i, u in enumerate(us):
        if len(u) != n:
            raise ValueError(f"fleiss_kappa needs the same number of labels in every unit: unit 0 has {n}, "
                             f"unit {i} has {len(u)} (use krippendorff_alpha for missing labels)")
    if n < 2:
        raise ValueError(f"fleiss_kappa needs at least 2 labels per unit, got {n}")
    index: dict[Any, int] = {}
    for u in us:
        for x in u:
            index.setdefault(x, len(index))
    counts = np.zeros((len(us), len(index)))
    for i, u in enumerate(us):
        for x in u:
            counts[i, index[x]] += 1
    p_i = ((counts ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = float(p_i.mean())
    p_j = counts.sum(axis=0) / (len(us) * n)
    p_e = float((p_j ** 2).sum())
    if math.isclose(p_e, 1.0):
        return NAN
    return (p_bar - p_e) / (1.0 - p_e)


def _values_index(units: list[list[Any]], level: str) -> list[Any]:
    """The distinct values, in the order the metric needs (sorted for ordinal/interval/ratio)."""
    seen: dict[Any, None] = {}
    for u in units:
        for x in u:
            seen.setdefault(x, None)
    values = list(seen)
    if level == "nominal":
        return values
    if level in ("interval", "ratio"):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                raise ValueError(f"krippendorff_alpha level '{level}' needs numeric labels, got {v!r}")
            if level == "ratio" and v < 0:
                raise ValueError(f"krippendorff_alpha level 'ratio' needs labels >= 0, got {v!r}")
    try:
        return sorted(values)
    except TypeError:
        raise ValueError(f"krippendorff_alpha level '{level}' needs labels that can be ordered, "
                         f"got mixed types {sorted({type(v).__name__ for v in values})}") from None


def coincidence_matrix(units: Iterable[Sequence[Any]], level: str = "nominal") -> tuple[list[Any], np.ndarray]:
    """Krippendorff's coincidence matrix: (values, o) with o[c, k] = sum_u (number of ordered c-k pairs of
    labels in unit u) / (m_u - 1), over units with m_u >= 2 labels (Krippendorff 2011, "Computing", step B).
    Missing labels (`None`/NaN) are dropped."""
    if level not in LEVELS:
        raise ValueError(f"unknown level '{level}': choose one of {', '.join(LEVELS)}")
    us = [u for u in _units(units, drop_missing=True) if len(u) >= 2]
    values = _values_index(us, level)
    index = {x: i for i, x in enumerate(values)}
    counts = np.zeros((len(us), len(values)))  # (U, V) labels of value v in unit u
    for i, u in enumerate(us):
        for x in u:
            counts[i, index[x]] += 1
    m = counts.sum(axis=1)
    w = 1.0 / np.maximum(m - 1.0, 1.0)
    o = (counts * w[:, None]).T @ counts - np.diag((counts * w[:, None]).sum(axis=0))
    return values, o


def krippendorff_alpha(units: Iterable[Sequence[Any]], level: str = "nominal") -> float:
    """Krippendorff's alpha = 1 - D_o / D_e for any number of annotators, missing labels and the metric of
    `level` ("nominal", "ordinal", "interval" or "ratio"), as in Krippendorff (2011), "Computing Krippendorff's
    Alpha-Reliability"; computed by the `krippendorff` package from each unit's value counts.

    A unit is the list of labels one item received (`None`/NaN: missing); units with fewer than 2 labels carry
    no pairable values and are ignored. Rater identities are not needed. Labels may be any hashable values for
    "nominal", values that can be ordered for "ordinal", numbers for "interval" and numbers >= 0 for "ratio".
    `nan` when fewer than two pairable values remain or every pairable value is the same (D_e = 0).
    """
    import krippendorff

    if level not in LEVELS:
        raise ValueError(f"unknown level '{level}': choose one of {', '.join(LEVELS)}")
    us = [u for u in _units(units, drop_missing=True) if len(u) >= 2]
    values = _values_index(us, level)
    if len(values) < 2:
        return NAN
    index = {x: i for i, x in enumerate(values)}
    counts = np.zeros((len(us), len(values)))  # (U, V) labels of value v in unit u
    for i, u in enumerate(us):
        for x in u:
            counts[i, index[x]] += 1
    # nominal and ordinal alpha depend only on which value is which (and their order): their ranks stand in
    # for labels that are not numbers
    domain = values if level in ("interval", "ratio") else list(range(len(values)))
    return float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))


def _aligned_ranks(order_a: Sequence[float] | Mapping[Any, float],
                   order_b: Sequence[float] | Mapping[Any, float]) -> tuple[list[Any], list[Any]]:
    if isinstance(order_a, Mapping) or isinstance(order_b, Mapping):
        if not (isinstance(order_a, Mapping) and isinstance(order_b, Mapping)):
            raise ValueError("kendall_tau needs two sequences of ranks or two mappings item -> rank, not one of each")
        if set(order_a) != set(order_b):
            only = sorted(map(repr, set(order_a) ^ set(order_b)))[:3]
            raise ValueError(f"kendall_tau: the two rankings rank different items (e.g. {', '.join(only)})")
        keys = list(order_a)
        return [order_a[k] for k in keys], [order_b[k] for k in keys]
    a, b = list(order_a), list(order_b)
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs two rankings of the same items, got lengths {len(a)} and {len(b)}")
    return a, b


def kendall_tau(order_a: Sequence[float] | Mapping[Any, float], order_b: Sequence[float] | Mapping[Any, float]
                ) -> float:
    """Kendall's tau-b between two rankings of the same items, ties allowed.

    A ranking is the rank (or any score where smaller means better) of each item: a sequence aligned by item
    index, or a mapping item -> rank; equal ranks are ties. tau_b = (C - D) / sqrt((P - T_a)(P - T_b)), with
    C/D the concordant/discordant item pairs, P all pairs and T_a/T_b the pairs tied in one ranking (Kendall
    1945, "The treatment of ties in ranking problems"; without ties it is Kendall's 1938 tau). 1 for the same
    order, -1 for the reversed one; `nan` when a ranking ties every item or fewer than 2 items are given.
    """
    a, b = _aligned_ranks(order_a, order_b)
    for name, seq in (("order_a", a), ("order_b", b)):
        for i, x in enumerate(seq):
            if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating) or math.isnan(x):
                raise ValueError(f"kendall_tau: {name} item {i} must be a numeric rank, got {x!r}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return NAN
    from scipy.stats import kendalltau  # tau-b (its default variant); imported here to keep the app's start light

    return float(kendalltau(x, y).statistic)


def mean_pairwise_kendall_tau(units_of_rankings: Iterable[Sequence[Sequence[float] | Mapping[Any, float]]]
                              ) -> float:
    """Mean of Kendall's tau-b over every pair of rankings within a unit (the rankings several annotators gave
    the same item's responses), pooled over units; a distance in [-1, 1] for ranking tasks. Units with fewer
    than 2 rankings and pairs whose tau is undefined (a ranking that ties everything) are skipped; `nan` when
    no pair remains."""
    taus = []
    for i, unit in enumerate(units_of_rankings):
        if isinstance(unit, str | bytes | Mapping) or not isinstance(unit, Iterable):
            raise ValueError(f"unit {i}: expected a list of rankings, got {type(unit).__name__}")
        rankings = list(unit)
        for j in range(len(rankings)):
            for k in range(j + 1, len(rankings)):
                try:
                    t = kendall_tau(rankings[j], rankings[k])
                except ValueError as e:
                    raise ValueError(f"unit {i}, rankings {j} and {k}: {e}") from None
                if not math.isnan(t):
                    taus.append(t)
    return float(np.mean(taus)) if taus else NAN


def agreement_with_reference(labels: Mapping[Any, Any], reference: Mapping[Any, Any]) -> float:
    """Fraction of the keys present in both mappings (e.g. gold items, or items with a majority label) on which
    `labels` equals `reference`; `nan` when they share no key."""
    if not isinstance(labels, Mapping) or not isinstance(reference, Mapping):
        raise ValueError(f"agreement_with_reference needs two mappings key -> label, got "
                         f"{type(labels).__name__} and {type(reference).__name__}")
    shared = [k for k in labels if k in reference]
    if not shared:
        return NAN
    return sum(labels[k] == reference[k] for k in shared) / len(shared)


__all__ = [
    "LEVELS",
    "agreement_with_reference",
    "coincidence_matrix",
    "cohen_kappa",
    "fleiss_kappa",
    "kendall_tau",
    "krippendorff_alpha",
    "mean_pairwise_kendall_tau",
    "raw_agreement",
]
