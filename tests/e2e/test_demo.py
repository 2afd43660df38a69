"""`prefloop demo --preset tiny` end to end: every stage runs, the files exist and load, and the metrics
move the way RLHF says they should on the synthetic world."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from prefloop.recipes.demo import DemoConfig, run_demo

STAGE_KEYS = {"gold_reward_mean", "reward_model_mean", "kl_to_ref", "distinct_1", "distinct_2", "self_bleu",
              "mean_response_tokens", "gold_win_rate_vs_sft"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(DemoConfig(out=out, preset="tiny", seed=0))
    return out, json.loads((out / "metrics.json").read_text())


def test_metrics_file_has_the_contract(demo):
    _, m = demo
    assert set(m["stages"]) == {"base", "sft", "ppo"}
    for stage in m["stages"].values():
        assert STAGE_KEYS <= set(stage)
    assert {"heldout_accuracy", "gold_accuracy", "train_comparisons"} <= set(m["reward_model"])
    assert {"world", "pretrain", "sft", "reward", "ppo", "evaluate"} <= set(m["seconds"])
    # The adaptive KL controller acted on the run (its coefficient moved from the preset's start).
    ppo = m["ppo_training"]
    assert ppo["kl_target"] == m["settings"]["kl_target"] and ppo["updates"] == m["settings"]["ppo_steps"]
    assert ppo["kl_coef_final"] != m["settings"]["kl_coef"]
    assert ppo["kl_second_half_min"] <= ppo["kl_last_mean"] <= ppo["kl_second_half_max"]


def test_metrics_move_the_right_way(demo):
    _, m = demo
    s = m["stages"]
    # SFT on demonstrations beats the chaotic base model under the hidden gold judge.
    assert s["sft"]["gold_reward_mean"] > s["base"]["gold_reward_mean"]
    assert s["base"]["gold_win_rate_vs_sft"] < 0.5
    # PPO raises the proxy reward it optimises, paying KL to SFT for it.
    assert s["ppo"]["reward_model_mean"] > s["sft"]["reward_model_mean"]
    assert s["ppo"]["kl_to_ref"] > 0.05 and abs(s["sft"]["kl_to_ref"]) < 1e-4
    # The reward model learned something real from the simulated annotators.
    assert m["reward_model"]["gold_accuracy"] > 0.55 and m["reward_model"]["train_comparisons"] > 300


def test_report_plots_and_checkpoints(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    assert "## Stages" in report and "gold win rate vs SFT" in report and "ppo_curves.png" in report
    assert (out / "ppo_curves.png").stat().st_size > 5000 and (out / "stages.png").stat().st_size > 5000
    for stage in ("base", "sft", "ppo"):
        assert AutoModelForCausalLM.from_pretrained(out / stage / "model") is not None
        assert json.loads((out / stage / "prefloop.json").read_text())["recipe"] in ("pretrain", "sft", "ppo")
    assert AutoModelForSequenceClassification.from_pretrained(out / "reward" / "model").config.num_labels == 1
    for name in ("corpus.jsonl", "demonstrations.jsonl", "prompts_train.jsonl", "prompts_heldout.jsonl",
                 "comparisons.jsonl", "world.json"):
        assert (out / "world" / name).exists()
