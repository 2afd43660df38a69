"""Each recipe a few steps on a micro model: the loss falls, the files load with plain transformers."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from prefloop.recipes.pretrain import PretrainConfig, run_pretrain
from prefloop.recipes.reward import RewardConfig, run_reward
from prefloop.recipes.sample import SampleConfig, run_sample
from prefloop.recipes.sft import SFTConfig, run_sft
from prefloop.runtime import read_metrics


def test_pretrain_trains_tokenizer_and_model(tmp_path, toy_data):
    out = tmp_path / "base"
    run_pretrain(PretrainConfig(data=toy_data["corpus"], out=out, size="micro", vocab_size=280, max_length=32,
                                batch_size=16, epochs=2, lr=3e-3))
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["loss/lm"] < rows[0]["loss/lm"] - 1.0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size >= 270
    meta = json.loads((out / "prefloop.json").read_text())
    assert meta["recipe"] == "pretrain" and len(meta["data"]["data"]) == 64


def test_sft_lowers_completion_loss(tmp_path, policy_dir, toy_data):
    out = tmp_path / "sft"
    run_sft(SFTConfig(model=str(policy_dir), data=toy_data["demos"], out=out, max_steps=25, batch_size=16,
                      lr=3e-3, max_length=64))
    rows = read_metrics(out / "metrics.jsonl")
    first, last = rows[0]["loss/sft"], rows[-1]["loss/sft"]
    assert last < first - 1.0
    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None
    assert json.loads((out / "prefloop.json").read_text())["metrics"]["examples"] == 200


def test_reward_learns_preference(reward_dir):
    meta = json.loads((reward_dir.parent / "prefloop.json").read_text())
    assert meta["metrics"]["eval/accuracy"] >= 0.9
    rm = AutoModelForSequenceClassification.from_pretrained(reward_dir)
    assert rm.config.num_labels == 1


def test_reward_margin_option_runs(tmp_path, policy_dir, toy_data):
    rows = [json.loads(x) for x in toy_data["pairs"].read_text().splitlines()][:32]
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({**r, "margin": 1.0}) + "\n" for r in rows))
    run_reward(RewardConfig(model=str(policy_dir), data=data, out=tmp_path / "rm", max_steps=2, batch_size=8,
                            use_margin=True, eval_fraction=0.0, max_length=64))
    assert (tmp_path / "rm" / "model" / "model.safetensors").exists()


def test_sample_writes_k_responses(tmp_path, policy_dir, toy_data):
    out = tmp_path / "s.jsonl"
    run_sample(SampleConfig(model=str(policy_dir), prompts=toy_data["prompts"], out=out, num_samples=3,
                            max_new_tokens=6, batch_size=16))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 64 and all(len(r["responses"]) == 3 and len(r["ended"]) == 3 for r in rows)
