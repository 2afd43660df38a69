"""Every trainer takes its optimizer steps through RunContext: the micro-batches of a step but the last
accumulate gradients inside `no_sync` of every trained module (one all-reduce per step under DDP), and every
step logs the gradient norm before clipping as `grad_norm`."""

from __future__ import annotations

import math

import pytest
from accelerate import Accelerator

from prefloop.runtime import read_metrics

STEPS = 2  # optimizer steps of every run below, each over 2 micro-batches


def configs(name: str, out, policy_dir, reward_dir, toy_data):
    """(run function, config, trained modules) of a 2-step run of `name` with 2 micro-batches per step."""
    common = dict(out=out, max_steps=STEPS, batch_size=8, micro_batch_size=4, max_length=64, lr=1e-3)
    if name == "sft":
        from prefloop.recipes.sft import SFTConfig, run_sft
        return run_sft, SFTConfig(model=str(policy_dir), data=toy_data["demos"], **common), ["CausalLMLoss"]
    if name == "reward":
        from prefloop.recipes.reward import RewardConfig, run_reward
        return run_reward, RewardConfig(model=str(policy_dir), data=toy_data["pairs"], **common), ["RewardScorer"]
    if name == "dpo":
        from prefloop.recipes.dpo import DPOConfig, run_dpo
        cfg = DPOConfig(model=str(policy_dir), data=toy_data["pairs"], precompute_reference=False, **common)
        return run_dpo, cfg, ["SequenceLogprobs"]
    if name == "pretrain":
        from prefloop.recipes.pretrain import PretrainConfig, run_pretrain
        cfg = PretrainConfig(data=toy_data["corpus"], size="micro", vocab_size=280, **{**common, "max_length": 32})
        return run_pretrain, cfg, ["CausalLMLoss"]
    rl = dict(policy=str(policy_dir), reward=str(reward_dir), prompts=toy_data["prompts"], rollout_batch_size=8,
              max_new_tokens=4, **common)
    if name == "ppo":  # one epoch over one minibatch per update: one optimizer step per update
        from prefloop.recipes.ppo import PPOConfig, run_ppo
        return run_ppo, PPOConfig(ppo_epochs=1, **rl), ["ResponseForward", "CriticForward"]
    from prefloop.recipes.grpo import GRPOConfig, RLOOConfig, run_grpo, run_rloo
    if name == "grpo":
        return run_grpo, GRPOConfig(num_generations=4, **rl), ["ResponseForward"]
    return run_rloo, RLOOConfig(num_generations=4, **rl), ["ResponseForward"]


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "pretrain", "ppo", "grpo", "rloo"])
def test_every_trainer_accumulates_in_no_sync_and_logs_grad_norm(tmp_path, policy_dir, reward_dir, toy_data,
                                                                 monkeypatch, name):
    run, cfg, trained = configs(name, tmp_path / name, policy_dir, reward_dir, toy_data)
    entered = []
    no_sync = Accelerator.no_sync

    def recording(self, model):
        entered.append(type(self.unwrap_model(model)).__name__)
        return no_sync(self, model)

    monkeypatch.setattr(Accelerator, "no_sync", recording)
    run(cfg)
    # Each step: the first of its 2 micro-batches inside no_sync of each trained module, the last outside.
    assert sorted(entered) == sorted(trained * STEPS), entered
    rows = [r for r in read_metrics(cfg.out / "metrics.jsonl") if "lr" in r]  # not the final evaluation row
    assert len(rows) == STEPS
    for r in rows:
        assert isinstance(r.get("grad_norm"), float) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0, r
