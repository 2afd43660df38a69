"""The loop's KL plan per round and where each labelled reply came from (no models needed)."""

from __future__ import annotations

from prefloop.recipes.loop import LoopConfig, _record_sources, kl_plan


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
