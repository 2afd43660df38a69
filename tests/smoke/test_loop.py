"""`prefloop loop` on a tiny world with a micro model: rounds chain, feedback accumulates, a stopped loop
resumes where it stopped, and bad options are refused."""

from __future__ import annotations

import json

import pytest

from prefloop.errors import ConfigError
from prefloop.recipes.loop import Loop, LoopConfig, round_prompts


def loop_config(tmp_path, world_and_policy, **kw) -> LoopConfig:
    world, policy = world_and_policy
    base = dict(world=world, policy=str(policy), out=tmp_path / "loop", rounds=2, comparisons=48, rl_steps=2,
                rollout_batch_size=8, batch_size=8, max_new_tokens=8, max_length=64, rm_epochs=1, rm_batch=16,
                eval_prompts=6, eval_k=2, heldout_fraction=0.25)
    base.update(kw)
    return LoopConfig(**base)


def test_round_prompts_are_disjoint_and_seeded():
    cfg = LoopConfig(rounds=3, comparisons=30, seed=1)
    prompts = [f"p{i}" for i in range(50)]
    slices = round_prompts(prompts, cfg)
    assert [len(s) for s in slices] == [10, 10, 10]
    assert len({p for s in slices for p in s}) == 30
    assert slices == round_prompts(prompts, cfg)
    assert slices != round_prompts(prompts, LoopConfig(rounds=3, comparisons=30, seed=2))
    with pytest.raises(ConfigError, match="exceeds the world's 50 train prompts"):
        round_prompts(prompts, LoopConfig(rounds=2, comparisons=200))


def test_two_rounds_chain_accumulate_and_resume(tmp_path, world_and_policy):
    cfg = loop_config(tmp_path, world_and_policy, kl_target=1.0, kl_horizon=16)
    calls = []

    def flaky_feedback(items, rnd, seed):
        calls.append(rnd)
        if rnd == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt  # the loop is stopped in round 2's feedback stage
        return loop.world.label_pairs([it["prompt"] for it in items], [it["responses"][0] for it in items],
                                      [it["responses"][1] for it in items], seed=seed)

    loop = Loop(cfg, feedback_fn=flaky_feedback)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    state = json.loads((cfg.out / "loop_state.json").read_text())
    assert state["done"] == ["1/sample", "1/feedback", "1/reward", "1/rl", "1/evaluate", "2/sample"]
    rm1 = (cfg.out / "round-1" / "reward" / "model" / "model.safetensors").stat().st_mtime_ns

    loop = Loop(cfg, feedback_fn=flaky_feedback)  # run again: resumes at round 2, feedback
    summary = loop.run()
    assert calls == [1, 2, 2]
    assert (cfg.out / "round-1" / "reward" / "model" / "model.safetensors").stat().st_mtime_ns == rm1
    r1, r2 = summary["rounds"]
    # The reward model of round 2 is refit on both rounds' comparisons.
    assert r2["comparisons_so_far"] > r1["comparisons_so_far"] > 0
    all2 = (cfg.out / "round-2" / "all_comparisons_train.jsonl").read_text().splitlines()
    assert {json.loads(x)["meta"]["round"] for x in all2} == {1, 2}
    # Round 2's RL starts from round 1's policy and keeps the KL reference at the initial policy.
    ppo2 = json.loads((cfg.out / "round-2" / "rl" / "prefloop.json").read_text())["config"]
    assert ppo2["policy"] == str(cfg.out / "round-1" / "rl" / "model") and ppo2["reference"] == cfg.policy
    # ... and its KL controller starts where round 1's ended.
    ppo1 = json.loads((cfg.out / "round-1" / "rl" / "prefloop.json").read_text())
    assert ppo2["kl_coef"] == ppo1["metrics"]["kl/coef"] != cfg.kl_coef
    for r in (r1, r2):
        assert r["gold_reward_mean"] is not None and r["kl_to_ref_k3"] > 0
    assert "| round |" in (cfg.out / "loop.md").read_text()
    html = (cfg.out / "report.html").read_text()
    assert "round 2" in html and "<table" in html and "data:image/png;base64" in html
    assert json.loads((cfg.out / "loop.json").read_text())["rounds"][1]["round"] == 2


def test_resume_with_other_options_is_refused(tmp_path, world_and_policy):
    cfg = loop_config(tmp_path, world_and_policy, rounds=1)
    cfg.out.mkdir(parents=True)
    (cfg.out / "loop_state.json").write_text(json.dumps({"fingerprint": {"rounds": 5}, "done": [], "results": {}}))
    with pytest.raises(ConfigError, match="started with other options"):
        Loop(cfg)


def test_cli_bad_inputs(tmp_path, world_and_policy, capsys):
    from prefloop.cli import main

    assert main(["loop", "--out", str(tmp_path / "x")]) == 2
    assert "missing option --world" in capsys.readouterr().err
    assert main(["loop", "--world", str(tmp_path), "--policy", "p", "--out", str(tmp_path / "x")]) == 2
    assert "no world.json" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["grpo", "rloo", "dpo"])
def test_other_methods_run_a_round(tmp_path, world_and_policy, method):
    cfg = loop_config(tmp_path, world_and_policy, rounds=1, comparisons=24, method=method, num_generations=2,
                      rl_lr=1e-3)
    summary = Loop(cfg).run()
    recipe = json.loads((cfg.out / "round-1" / "rl" / "prefloop.json").read_text())
    assert recipe["recipe"] == method
    assert recipe["config"]["reference"] == cfg.policy
    assert summary["rounds"][0]["kl_to_ref_k3"] > 0  # the policy moved away from the initial one


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_selected_pairs_fill_the_budget_and_kl_resets_to_the_last_policy(tmp_path, world_and_policy):
    # 2 rounds x 12 labels from 3x as many candidate prompts, 3 replies each: round 2 ranks its pairs by the
    # uncertainty of round 1's reward model, and its PPO is anchored to round 1's policy.
    cfg = loop_config(tmp_path, world_and_policy, comparisons=24, pool_factor=3.0, candidates=3, pairs="spread",
                      select="uncertainty", kl_strategy="reset", kl_target=1.0, kl_horizon=16)
    loop = Loop(cfg)
    summary = loop.run()
    for rnd, by in ((1, "random"), (2, "uncertainty")):
        d = cfg.out / f"round-{rnd}"
        cands, chosen = _rows(d / "candidates.jsonl"), _rows(d / "samples.jsonl")
        assert len(cands) > 12 and len(chosen) == 12  # exactly the round's share of the budget is labelled
        assert all(r["responses"][0].strip() != r["responses"][1].strip() for r in cands)
        assert {r["meta"]["selection"]["by"] for r in chosen} == {by}
        policy = "initial" if rnd == 1 else "round-1"
        assert all(r["meta"]["policies"] == [policy, policy] for r in chosen)
        labelled = _rows(d / "comparisons_train.jsonl") + _rows(d / "comparisons_heldout.jsonl")
        assert all(r["meta"]["chosen_policy"] == policy for r in labelled)
    # Uncertainty selection labels the pairs round 1's reward model separates least.
    c2 = _rows(cfg.out / "round-2" / "candidates.jsonl")
    sel = _rows(cfg.out / "round-2" / "samples.jsonl")
    assert sum(r["meta"]["selection"]["selected"] for r in c2) == len(sel) == 12
    left = [r["meta"]["selection"]["usefulness"] for r in c2 if not r["meta"]["selection"]["selected"]]
    assert min(r["meta"]["selection"]["usefulness"] for r in sel) >= max(left)
    assert len({abs(r["meta"]["selection"]["rm_margin"]) for r in c2}) > 1  # the reward model did separate some
    ppo2 = json.loads((cfg.out / "round-2" / "rl" / "prefloop.json").read_text())["config"]
    assert ppo2["reference"] == str(cfg.out / "round-1" / "rl" / "model") and ppo2["kl_target"] == 0.5
    assert summary["rounds"][1]["kl_to_ref_k3"] > 0  # the evaluation still measures KL to the initial policy


def test_anchor_pairs_set_the_current_policy_against_the_initial_one(tmp_path, world_and_policy):
    cfg = loop_config(tmp_path, world_and_policy, rounds=2, comparisons=16, pairs="anchor", candidates=2,
                      kl_strategy="ramp", kl_target=2.0, kl_horizon=16, gold_checks=20, min_annotator_agreement=0.9)
    loop = Loop(cfg)
    for ann in loop.world.annotators[::2]:
        ann.noise = 1.0  # every other annotator flips a coin: screening has labels to drop
    loop.run()
    # Gold checks: every annotator judged 20 known pairs; labels of those below 0.9 are kept out of training.
    fb = loop.state.results["1"]["feedback"]
    assert fb["check_labels"] == 20 * len(loop.world.annotators)
    low = {a for a, v in fb["annotator_check_agreement"].items() if v < 0.9}
    dropped = _rows(cfg.out / "round-1" / "comparisons_dropped.jsonl")
    trained = _rows(cfg.out / "round-1" / "comparisons_train.jsonl") + \
        _rows(cfg.out / "round-1" / "comparisons_heldout.jsonl")
    assert len(dropped) == fb["dropped_labels"] and {r["annotator"] for r in dropped} <= low
    assert not low & {r["annotator"] for r in trained} and len(trained) + len(dropped) == fb["comparisons"]
    # What screening changed: a reward model fit on every label (the dropped ones too), measured on the same
    # held-out pairs, reported beside the screened one.
    rw = loop.state.results["2"]["reward"]
    dropped_so_far = sum(loop.state.results[r]["feedback"]["dropped_labels"] for r in ("1", "2"))
    assert dropped_so_far > 0 and rw["dropped_comparisons"] == dropped_so_far
    every = _rows(cfg.out / "round-2" / "all_comparisons_unscreened.jsonl")
    assert len(every) == rw["train_comparisons"] + dropped_so_far
    assert "gold_accuracy_unscreened" in rw and (cfg.out / "round-2" / "reward-unscreened" / "model").is_dir()
    assert "rm_gold_accuracy_unscreened" in (cfg.out / "loop.md").read_text()
    items = _rows(cfg.out / "round-2" / "samples.jsonl")
    assert items and all(it["meta"]["policies"] == ["round-1", "initial"] for it in items)
    ppo1 = json.loads((cfg.out / "round-1" / "rl" / "prefloop.json").read_text())["config"]
    ppo2 = json.loads((cfg.out / "round-2" / "rl" / "prefloop.json").read_text())["config"]
    assert (ppo1["kl_target"], ppo2["kl_target"]) == (1.0, 2.0) and ppo2["reference"] == cfg.policy


def test_selection_options_are_checked(tmp_path, world_and_policy):
    with pytest.raises(ConfigError, match="--select disagreement needs --rm-ensemble 2"):
        Loop(loop_config(tmp_path, world_and_policy, select="disagreement"))
    with pytest.raises(ConfigError, match="--kl-strategy ramp needs --kl-target"):
        Loop(loop_config(tmp_path, world_and_policy, kl_strategy="ramp"))
    with pytest.raises(ConfigError, match="pool-factor 50.0 exceeds"):
        Loop(loop_config(tmp_path, world_and_policy, pool_factor=50.0))


@pytest.mark.slow  # two reward models per round for two rounds
def test_ensemble_disagreement_selects_in_round_two(tmp_path, world_and_policy):
    cfg = loop_config(tmp_path, world_and_policy, comparisons=24, pool_factor=2.0, rm_ensemble=2,
                      select="disagreement", rl_steps=1)
    summary = Loop(cfg).run()
    assert (cfg.out / "round-1" / "reward" / "ensemble.json").is_file()
    sel = _rows(cfg.out / "round-2" / "candidates.jsonl")
    assert {r["meta"]["selection"]["by"] for r in sel} == {"disagreement"}
    assert max(r["meta"]["selection"]["usefulness"] for r in sel) > 0  # two members, different seeds, disagree
    ppo2 = json.loads((cfg.out / "round-2" / "rl" / "prefloop.json").read_text())["config"]
    assert ppo2["reward"] == str(cfg.out / "round-2" / "reward")  # RL on the ensemble's mean
    assert summary["rounds"][1]["rm_gold_accuracy"] is not None
