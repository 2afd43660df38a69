"""Agreement statistics against published worked examples a reader can check, plus edge cases."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from prefloop.feedback.agreement import (
    agreement_with_reference,
    cohen_kappa,
    coincidence_matrix,
    fleiss_kappa,
    kendall_tau,
    krippendorff_alpha,
    mean_pairwise_kendall_tau,
    raw_agreement,
)

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers x 12 units with
# missing values (also Krippendorff, Content Analysis, 2004/2019). Published: nominal 0.743, ordinal 0.815,
# interval 0.849, ratio 0.797.
_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]
KRIPP_UNITS = [list(u) for u in zip(*_OBSERVERS)]

# Krippendorff (2011), example A: two observers, binary data, 10 units; published alpha = 0.095.
KRIPP_BINARY = list(zip([0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]))

# The Fleiss' kappa worked example reproduced in textbooks and the Wikipedia article "Fleiss' kappa":
# 10 subjects, 14 raters each, 5 categories, counts n_ij per subject. P-bar = 0.378, P_e = 0.213, kappa = 0.210.
FLEISS_COUNTS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]
FLEISS_UNITS = [[j for j, c in enumerate(row) for _ in range(c)] for row in FLEISS_COUNTS]


def _pairs_from_table(table: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    a, b = [], []
    for (x, y), count in table.items():
        a += [x] * count
        b += [y] * count
    return a, b


# --- Krippendorff's alpha -----------------------------------------------------------------------------------

@pytest.mark.parametrize("level,published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                             ("ratio", 0.797)])
def test_krippendorff_published_example_with_missing_data(level, published):
    assert krippendorff_alpha(KRIPP_UNITS, level) == pytest.approx(published, abs=5e-4)


def test_krippendorff_binary_two_observers():
    assert krippendorff_alpha(KRIPP_BINARY, "nominal") == pytest.approx(0.095, abs=5e-4)


def test_coincidence_marginals_count_pairable_values():
    # counted by hand from the table: unit 12 has a single value, so it drops out; 40 pairable values remain
    values, o = coincidence_matrix(KRIPP_UNITS, "nominal")
    marginals = dict(zip(values, o.sum(axis=1)))
    assert marginals == pytest.approx({1: 9, 2: 13, 3: 10, 4: 5, 5: 3})
    assert (o == o.T).all()


def test_krippendorff_order_of_labels_within_units_and_of_units_does_not_matter():
    rng = random.Random(0)
    shuffled = [rng.sample(u, len(u)) for u in KRIPP_UNITS]
    rng.shuffle(shuffled)
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert krippendorff_alpha(shuffled, level) == pytest.approx(krippendorff_alpha(KRIPP_UNITS, level))


def test_krippendorff_perfect_agreement_is_one_and_no_variation_is_nan():
    assert krippendorff_alpha([[1, 1, 1], [2, 2], [3, 3, None]], "interval") == 1.0
    assert krippendorff_alpha([["a", "a"], ["b", "b", "b"]]) == 1.0
    assert math.isnan(krippendorff_alpha([[2, 2, 2], [2, 2]], "interval"))
    assert math.isnan(krippendorff_alpha([[1], [2], []]))  # nothing pairable
    assert math.isnan(krippendorff_alpha([]))


def test_krippendorff_interval_matches_a_naive_pairwise_reference():
    # alpha_interval = 1 - D_o / D_e with D_o the mean squared difference over pairs within units (each unit's
    # pairs weighted 1/(m_u - 1)) and D_e the mean squared difference over all pairs of pairable values.
    rng = random.Random(1)
    units = [[rng.randint(-4, 4) for _ in range(rng.randint(1, 6))] for _ in range(40)]
    pairable = [u for u in units if len(u) >= 2]
    values = [x for u in pairable for x in u]
    n = len(values)
    d_o = sum(sum((x - y) ** 2 for x, y in itertools.permutations(u, 2)) / (len(u) - 1) for u in pairable) / n
    d_e = sum((x - y) ** 2 for x, y in itertools.permutations(values, 2)) / (n * (n - 1))
    assert krippendorff_alpha(units, "interval") == pytest.approx(1 - d_o / d_e)


def test_krippendorff_systematic_disagreement_is_below_zero():
    assert krippendorff_alpha([[1, 2], [2, 1], [1, 2], [2, 1]]) < 0


def test_krippendorff_invalid_input():
    with pytest.raises(ValueError, match="unknown level 'cardinal'"):
        krippendorff_alpha(KRIPP_UNITS, "cardinal")
    with pytest.raises(ValueError, match="needs numeric labels"):
        krippendorff_alpha([["a", "b"]], "interval")
    with pytest.raises(ValueError, match="labels >= 0"):
        krippendorff_alpha([[-1, 2]], "ratio")
    with pytest.raises(ValueError, match="can be ordered"):
        krippendorff_alpha([["a", 1]], "ordinal")
    with pytest.raises(ValueError, match="unit 1 label 0: labels must be hashable"):
        krippendorff_alpha([[1, 2], [[1], 2]])
    with pytest.raises(ValueError, match="unit 0: expected a list of labels"):
        krippendorff_alpha(["ab"])


# --- kappas and raw agreement ----------------------------------------------------------------------------------

def test_fleiss_textbook_example():
    assert fleiss_kappa(FLEISS_UNITS) == pytest.approx(0.210, abs=5e-4)
    assert raw_agreement(FLEISS_UNITS) == pytest.approx(0.378, abs=5e-4)  # = P-bar for equal unit sizes


def test_cohen_kappa_two_by_two_table():
    # the worked example of the Wikipedia article "Cohen's kappa" (50 proposals, two readers):
    # yes/yes 20, yes/no 5, no/yes 10, no/no 15: p_o = 0.70, p_e = 0.5*0.6 + 0.5*0.4 = 0.50, kappa = 0.40
    a, b = _pairs_from_table({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.40)


def test_cohen_kappa_three_categories_by_hand():
    # 100 items; diagonal 25 + 20 + 15 = 60 -> p_o = 0.6; marginals a = (40, 35, 25), b = (35, 30, 35)
    # p_e = (40*35 + 35*30 + 25*35) / 100^2 = 0.3325; kappa = (0.6 - 0.3325) / 0.6675 = 0.40075
    table = {("x", "x"): 25, ("x", "y"): 5, ("x", "z"): 10, ("y", "x"): 5, ("y", "y"): 20, ("y", "z"): 10,
             ("z", "x"): 5, ("z", "y"): 5, ("z", "z"): 15}
    a, b = _pairs_from_table(table)
    assert cohen_kappa(a, b) == pytest.approx((0.6 - 0.3325) / (1 - 0.3325))


def test_two_rater_kappas_and_alpha_relate_as_published():
    # For two raters Fleiss' kappa equals Scott's pi, and Krippendorff's alpha = 1 - (1 - pi) * (n - 1) / n
    # with n the number of pairable values (Krippendorff 2011): a check across three implementations.
    a, b = _pairs_from_table({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    units = [list(p) for p in zip(a, b)]
    pi = fleiss_kappa(units)
    assert krippendorff_alpha(units) == pytest.approx(1 - (1 - pi) * 99 / 100)


def test_kappas_perfect_and_no_variation():
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    assert fleiss_kappa([["a", "a"], ["b", "b"]]) == 1.0
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))
    assert math.isnan(fleiss_kappa([["a", "a"], ["a", "a"]]))
    assert math.isnan(cohen_kappa([], []))
    assert raw_agreement([["a", "a"], ["a", "a", "a"]]) == 1.0
    assert math.isnan(raw_agreement([["a"], []]))


def test_raw_agreement_pools_pairs_and_ignores_missing():
    # unit 1: pairs (a,a),(a,b),(a,b) -> 1 of 3; unit 2: one pair, agreeing; unit 3: one label, ignored
    assert raw_agreement([["a", "a", "b"], ["c", None, "c"], ["d"]]) == pytest.approx(2 / 4)


def test_kappa_invalid_input():
    with pytest.raises(ValueError, match="equal length, got 2 and 3"):
        cohen_kappa([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"b\[1\]: missing label"):
        cohen_kappa([1, 2], [1, None])
    with pytest.raises(ValueError, match="unit 0 has 3, unit 1 has 2"):
        fleiss_kappa([[1, 1, 2], [1, 2]])
    with pytest.raises(ValueError, match="at least 2 labels per unit"):
        fleiss_kappa([[1], [2]])
    with pytest.raises(ValueError, match="unit 1 label 1: missing label"):
        fleiss_kappa([[1, 2], [1, None]])


# --- rankings ------------------------------------------------------------------------------------------------

def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped adjacent pair among 4 items: 5 concordant, 1 discordant of 6 pairs -> 4/6
    assert kendall_tau([1, 2, 3, 4], [2, 1, 3, 4]) == pytest.approx(4 / 6)


def test_kendall_tau_b_with_ties():
    # x = [12, 2, 1, 12, 2], y = [1, 4, 7, 1, 0] (the example of scipy.stats.kendalltau's docs): of 10 pairs,
    # C = 2, D = 6, 1 tied in x only, 1 tied in both, so tau_b = (2 - 6) / sqrt(8 * 9) = -0.4714
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-4 / math.sqrt(72))


def test_kendall_tau_mappings_align_by_item():
    a = {"r1": 1, "r2": 2, "r3": 3}
    b = {"r3": 3, "r1": 1, "r2": 2}
    assert kendall_tau(a, b) == 1.0
    with pytest.raises(ValueError, match="rank different items"):
        kendall_tau(a, {"r1": 1, "r2": 2, "r4": 3})
    with pytest.raises(ValueError, match="lengths 3 and 2"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="numeric rank"):
        kendall_tau([1, "b"], [1, 2])
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_mean_pairwise_kendall_tau():
    unit1 = [[1, 2, 3], [1, 2, 3], [3, 2, 1]]  # taus 1, -1, -1
    unit2 = [[1, 2], [1, 2]]  # tau 1
    unit3 = [[1, 2, 3]]  # single ranking: ignored
    assert mean_pairwise_kendall_tau([unit1, unit2, unit3]) == pytest.approx(0.0)
    assert math.isnan(mean_pairwise_kendall_tau([unit3]))
    with pytest.raises(ValueError, match="unit 0, rankings 0 and 1"):
        mean_pairwise_kendall_tau([[[1, 2], [1, 2, 3]]])


def test_agreement_with_reference():
    labels = {"i1": "A", "i2": "B", "i3": "A", "i9": "B"}
    gold = {"i1": "A", "i2": "A", "i3": "A", "i4": "B"}
    assert agreement_with_reference(labels, gold) == pytest.approx(2 / 3)
    assert math.isnan(agreement_with_reference({"x": 1}, {"y": 1}))
    with pytest.raises(ValueError, match="two mappings"):
        agreement_with_reference(["A"], gold)
