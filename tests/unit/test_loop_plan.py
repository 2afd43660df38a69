"""The loop's KL plan per round and where each labelled reply came from (no models needed)."""

from __future__ import annotations

import pytest

from prefloop.errors import ConfigError
from prefloop.recipes.loop import LoopConfig, _record_sources, kl_plan, rl_steps_of, round_prompts, split_budget


def test_kl_plan_spreads_or_resets_the_target():
    base = dict(policy="sft", rounds=3, kl_target=3.0)
    assert [kl_plan(LoopConfig(**base), r, f"p{r - 1}") for r in (1, 3)] == [("sft", 3.0), ("sft", 3.0)]
    ramp = LoopConfig(**base, kl_strategy="ramp")
    assert [kl_plan(ramp, r, "prev")[1] for r in (1, 2, 3)] == [1.0, 2.0, 3.0]
    reset = LoopConfig(**base, kl_strategy="reset")
    assert kl_plan(reset, 2, "round-1/rl/model") == ("round-1/rl/model", 1.0)
    assert kl_plan(LoopConfig(policy="sft", kl_strategy="reset"), 2, "prev") == ("prev", None)


def test_record_sources_follow_the_chosen_reply():
    items = [{"prompt": "p", "responses": ["a", "b"], "meta": {"policies": ["round-1", "initial"]}}]
    rec = {"id": "pair-0", "chosen": "b", "rejected": "a", "meta": {}}
    _record_sources(rec, items)
    assert (rec["meta"]["chosen_policy"], rec["meta"]["rejected_policy"]) == ("initial", "round-1")
    untouched = {"id": "x-0", "chosen": "a", "rejected": "b", "meta": {}}
    _record_sources(untouched, items)
    assert untouched["meta"] == {}


def test_a_run_of_an_earlier_version_resumes_unless_an_option_changed(tmp_path):
    import json

    import pytest

    from prefloop.errors import ConfigError
    from prefloop.recipes.loop import LoopState, _fingerprint

    cfg = LoopConfig(policy="sft", world=tmp_path)
    old = {k: v for k, v in _fingerprint(cfg).items() if k not in ("select", "pool_factor")}  # unknown then
    path = tmp_path / "loop_state.json"
    path.write_text(json.dumps({"fingerprint": old, "done": ["1/sample"], "results": {}}))
    assert LoopState(path, _fingerprint(cfg)).done == ["1/sample"]
    with pytest.raises(ConfigError, match=r"other options \(select\)"):
        LoopState(path, _fingerprint(LoopConfig(policy="sft", world=tmp_path, select="uncertainty")))


def test_split_budget_front_loads_round_one_and_spends_the_budget_exactly():
    assert split_budget(900, 3) == [300, 300, 300]
    assert split_budget(10, 3) == [4, 3, 3]  # the remainder goes to the earliest rounds
    assert split_budget(900, 3, 0.6) == [540, 180, 180]
    assert split_budget(901, 3, 0.6) == [541, 180, 180]
    assert split_budget(100, 4, 0.5) == [50, 17, 17, 16]
    assert split_budget(900, 1, 0.6) == [900]  # one round spends everything
    for total, rounds, share in ((7, 2, 0.3), (1000, 5, 0.75), (33, 3, 0.0)):
        assert sum(split_budget(total, rounds, share)) == total
    with pytest.raises(ConfigError, match="first-round-share 1.0"):
        split_budget(900, 3, 1.0)


def test_round_prompts_follow_the_split_and_rl_steps_the_first_round_override():
    prompts = [f"p{i}" for i in range(100)]
    cfg = LoopConfig(policy="sft", rounds=3, comparisons=60, first_round_share=0.5, pool_factor=1.5,
                     rl_steps=4, first_round_rl_steps=12)
    slices = round_prompts(prompts, cfg)
    assert [len(s) for s in slices] == [45, 22, 22]  # 30, 15, 15 labels x 1.5 candidate prompts
    assert len({p for s in slices for p in s}) == sum(len(s) for s in slices)  # disjoint
    assert [rl_steps_of(cfg, r) for r in (1, 2, 3)] == [12, 4, 4]
    assert rl_steps_of(LoopConfig(policy="sft", rl_steps=4), 1) == 4
    with pytest.raises(ConfigError, match="exceeds"):
        round_prompts(prompts[:80], cfg)
