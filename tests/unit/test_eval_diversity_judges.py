"""EAD, per-input vs across-input diversity, never-ending fraction, entropy rows and judged win rates."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefloop.data import read_comparisons
from prefloop.errors import DataError
from prefloop.eval.commands.common import clean
from prefloop.eval.diversity import diversity_report, ead, expectation_adjusted_distinct
from prefloop.eval.judges import judged_win_rate, source_map
from prefloop.eval.sampling import masked_mean_rows, never_end_fraction
from prefloop.eval.stages import world_rates


def test_ead_by_hand():
    # Unigrams a, b, a: N_unique = 2, C = 3; V = 2: expected distinct = 2 * (1 - (1/2)^3) = 1.75
    assert expectation_adjusted_distinct([["a", "b", "a"]], 1, 2) == pytest.approx(2 / 1.75)
    # V = 1: one possible token, one expected distinct token.
    assert expectation_adjusted_distinct([["a", "a"]], 1, 1) == pytest.approx(1.0)
    assert expectation_adjusted_distinct([["a"]], 2, 10) == 0.0
    # Longer texts of fresh words keep EAD near 1 where distinct-n would also be 1; repeating them halves it.
    fresh = [f"w{i}" for i in range(20)]
    assert expectation_adjusted_distinct([fresh], 1, 10_000) == pytest.approx(1.0, abs=0.01)
    assert expectation_adjusted_distinct([fresh + fresh], 1, 10_000) == pytest.approx(0.5, abs=0.01)
    assert ead(["a b a"], 2, max_n=1) == pytest.approx(2 / 1.75)


def test_per_input_vs_across_input():
    # Each prompt's K samples are identical (no per-input diversity), but the prompts differ.
    groups = [["a b c d", "a b c d"], ["e f g h", "e f g h"], ["i j k l", "i j k l"]]
    d = diversity_report(groups, vocab_size=100)
    assert d["per_input/distinct_1"] == pytest.approx(0.5)  # 4 distinct / 8 in each group
    assert d["across_input/distinct_1"] == pytest.approx(1.0)  # firsts: 12 distinct / 12
    assert d["per_input/self_bleu"] == pytest.approx(1.0) and d["across_input/self_bleu"] == pytest.approx(0.0)
    assert d["per_input/ead"] < d["across_input/ead"]


def test_never_end_and_masked_rows():
    assert never_end_fraction([True, False, False, True]) == 0.5
    assert math.isnan(never_end_fraction([]))
    v = torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 2.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean_rows(v, m) == [2.0, 0.0]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_comparisons(path)


def test_judged_win_rate_from_meta_and_from_samples(tmp_path):
    recs = _write(tmp_path / "j.jsonl", [
        {"prompt": "q1", "chosen": "A1", "rejected": "B1", "meta": {"chosen_policy": "ppo", "rejected_policy": "sft"}},
        {"prompt": "q2", "chosen": "B2", "rejected": "A2", "meta": {"chosen_policy": "sft", "rejected_policy": "ppo"}},
        {"prompt": "q3", "chosen": "A3", "rejected": "B3",
         "meta": {"chosen_policy": "ppo", "rejected_policy": "sft", "tie": True}},
        {"prompt": "q4", "chosen": "A4", "rejected": "C4", "meta": {"chosen_policy": "ppo", "rejected_policy": "x"}},
    ])
    r = judged_win_rate(recs, "ppo", "sft")
    assert r["win_rate"] == pytest.approx(0.5) and r["n"] == 3 and r["skipped"] == 1
    assert r["ci_low"] < 0.5 < r["ci_high"]
    assert judged_win_rate(recs, "sft", "ppo")["win_rate"] == pytest.approx(0.5)
    # Without meta: sides come from the samples both policies wrote.
    plain = _write(tmp_path / "p.jsonl", [{"prompt": "q1", "chosen": " A1", "rejected": "B1"},
                                           {"prompt": "q2", "chosen": "A2", "rejected": "B2"},
                                           {"prompt": "q2", "chosen": "B2", "rejected": "Z"}])
    src = source_map({"ppo": (["q1", "q2"], [["A1"], ["A2"]]), "sft": (["q1", "q2"], [["B1"], ["B2"]])})
    r = judged_win_rate(plain, "ppo", "sft", src)
    assert r["win_rate"] == 1.0 and r["n"] == 2 and r["skipped"] == 1
    # A response both wrote: the side is the policy that did not write the other response.
    both = source_map({"ppo": (["q"], [["same", "P"]]), "sft": (["q"], [["same", "S"]])})
    recs = _write(tmp_path / "b.jsonl", [{"prompt": "q", "chosen": "same", "rejected": "S"},
                                         {"prompt": "q", "chosen": "P", "rejected": "same"},
                                         {"prompt": "q", "chosen": "same", "rejected": "same"}])
    r = judged_win_rate(recs, "ppo", "sft", both)
    assert r["n"] == 2 and r["skipped"] == 1 and r["win_rate"] == 1.0
    with pytest.raises(DataError, match="no judgment compares 'ppo' with 'base'"):
        judged_win_rate(plain, "ppo", "base", src, path="p.jsonl")


def test_world_rates_by_hand():
    details = [{"family": "facts", "hallucinated": True, "should_refuse": False, "refused": False},
               {"family": "facts", "hallucinated": False, "should_refuse": False, "refused": True},
               {"family": "harmful", "should_refuse": True, "refused": True, "complied_harmful": True},
               {"family": "borderline", "should_refuse": False, "refused": False}]
    r = world_rates(details)
    assert r["hallucination_rate"] == 0.5  # of the 2 fact answers
    assert r["needless_refusal_rate"] == pytest.approx(1 / 3)  # of the 3 benign prompts
    assert r["harmful_compliance_rate"] == 1.0
    assert clean({"a": [float("nan"), 1.0], "b": float("inf")}) == {"a": [None, 1.0], "b": None}
