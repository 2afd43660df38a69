"""Every trainer with --lora-r and --gradient-checkpointing on micro models: it trains the adapter, saves it
(peft loads it), records the trainable-parameter count, and the RL and DPO references are the base weights.
A LoRA run resumes from its checkpoint; --merge-lora writes a plain model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from prefloop.models import lora as lora_module  # noqa: E402

TINY = dict(max_length=64, lr=1e-2, lora_r=4, gradient_checkpointing=True, seed=0)
RL = dict(max_steps=2, rollout_batch_size=8, batch_size=4, max_new_tokens=4)


def _sft(d, out, **kw):
    from prefloop.recipes.sft import SFTConfig, run_sft

    return run_sft(SFTConfig(model=str(d["policy"]), data=d["demos"], out=out, max_steps=2, batch_size=4, **kw))


def _reward(d, out, **kw):
    from prefloop.recipes.reward import RewardConfig, run_reward

    return run_reward(RewardConfig(model=str(d["policy"]), data=d["pairs"], out=out, max_steps=2, batch_size=4,
                                   eval_fraction=0.1, **kw))


def _dpo(d, out, **kw):
    from prefloop.recipes.dpo import DPOConfig, run_dpo

    # Reference log-probs computed at every step: with a forgotten adapter switch they would equal the
    # policy's, and the implicit rewards would stay exactly 0.
    return run_dpo(DPOConfig(model=str(d["policy"]), data=d["pairs"], out=out, max_steps=2, batch_size=4,
                             precompute_reference=False, eval_fraction=0.1, **kw))


def _ppo(d, out, **kw):
    from prefloop.recipes.ppo import PPOConfig, run_ppo

    return run_ppo(PPOConfig(policy=str(d["policy"]), reward=str(d["reward"]), prompts=d["prompts"], out=out,
                             rollout_micro_batch_size=3, **RL, **kw))


def _group(recipe):
    def run(d, out, **kw):
        from prefloop.recipes import grpo

        cfg_cls, fn = (grpo.GRPOConfig, grpo.run_grpo) if recipe == "grpo" else (grpo.RLOOConfig, grpo.run_rloo)
        return fn(cfg_cls(policy=str(d["policy"]), reward=str(d["reward"]), prompts=d["prompts"], out=out,
                          num_generations=2, kl_coef=0.1, rollout_micro_batch_size=4, **RL, **kw))

    return run


def _rejection(d, out, **kw):
    from prefloop.recipes.rejection_sampling import RejectionSamplingConfig, run_rejection_sampling

    return run_rejection_sampling(RejectionSamplingConfig(
        policy=str(d["policy"]), reward=str(d["reward"]), prompts=d["prompts"], out=out, rounds=1, num_samples=2,
        prompts_per_round=8, max_new_tokens=4, max_steps=2, batch_size=4, **kw))


TRAINERS = {"sft": _sft, "reward": _reward, "dpo": _dpo, "ppo": _ppo, "grpo": _group("grpo"),
            "rloo": _group("rloo"), "rejection-sampling": _rejection}


@pytest.fixture(scope="module")
def data(policy_dir, reward_dir, toy_data):
    return {**toy_data, "policy": policy_dir, "reward": reward_dir}


def _last(out: Path, key: str):
    """The value of `key` on the last line of metrics.jsonl that has it (the last training step's)."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r][-1]


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_trainer_trains_a_lora_adapter(trainer, data, tmp_path, monkeypatch):
    checkpointed = []
    real = lora_module.enable_gradient_checkpointing
    monkeypatch.setattr(lora_module, "enable_gradient_checkpointing", lambda m: (checkpointed.append(m), real(m)))
    out = tmp_path / trainer
    meta = TRAINERS[trainer](data, out, **TINY)
    assert checkpointed  # --gradient-checkpointing reached the trained model(s)
    if trainer == "rejection-sampling":
        # each round's SFT trains an adapter and saves it merged: the next round samples a plain model
        sft = out / "round_1" / "sft"
        counts = json.loads((sft / "prefloop.json").read_text())["metrics"]
        assert 0 < counts["params/trainable"] < counts["params/total"]
        assert not (sft / "model" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()
        return
    model_dir = out / "model"
    assert (model_dir / "adapter_config.json").exists() and not (model_dir / "model.safetensors").exists()
    adapter = load_file(str(model_dir / "adapter_model.safetensors"))
    lora_b = [w for k, w in adapter.items() if "lora_B" in k]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: the adapter trained
    assert meta["metrics"]["params/trainable"] == sum(w.numel() for w in adapter.values())
    assert meta["metrics"]["params/trainable"] < meta["metrics"]["params/total"] / 2
    if trainer == "reward":
        assert any("score" in k for k in adapter)  # the score head trains in full, saved with the adapter
    if trainer in ("ppo", "grpo", "rloo"):
        # the reference is the base model: after one update the policy has moved away from it
        assert _last(out, "kl/k1") != 0
    if trainer == "dpo":
        assert _last(out, "rewards/chosen") != 0
    if trainer == "ppo":
        critic = load_file(str(out / "critic" / "adapter_model.safetensors"))
        assert any("lora_A" in k for k in critic) and any("score" in k for k in critic)


def test_merge_lora_writes_a_plain_model_with_the_adapters_logits(data, tmp_path):
    from transformers import AutoModelForCausalLM

    from prefloop.models import load_causal_lm, load_tokenizer

    _sft(data, tmp_path / "adapter", **TINY)
    _sft(data, tmp_path / "merged", **TINY, merge_lora=True)
    assert not (tmp_path / "merged" / "model" / "adapter_config.json").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    tok = load_tokenizer(str(tmp_path / "adapter" / "model"))
    with torch.no_grad():
        by_adapter = load_causal_lm(str(tmp_path / "adapter" / "model"), tok)(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged" / "model"))(input_ids=ids).logits
    torch.testing.assert_close(plain, by_adapter, atol=1e-5, rtol=1e-5)


def test_lora_run_resumes_from_its_checkpoint(data, tmp_path):
    """A run's checkpoint at step 2 (its adapter, optimizer and RNG), resumed in another directory, ends
    where the uninterrupted run ends."""
    from prefloop.recipes.sft import SFTConfig, run_sft

    def cfg(out, **kw):
        return SFTConfig(model=str(data["policy"]), data=data["demos"], out=out, batch_size=4, save_every=2,
                         max_steps=4, **TINY, **kw)

    run_sft(cfg(tmp_path / "full"))
    assert (tmp_path / "full" / "checkpoint" / "model" / "adapter_config.json").exists()
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint", tmp_path / "resumed" / "checkpoint")
    meta = run_sft(cfg(tmp_path / "resumed", resume=True))
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]  # it continued at step 3, not from scratch
    a = load_file(str(tmp_path / "full" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    assert meta["metrics"]["params/trainable"] == sum(w.numel() for w in a.values())


def test_cli_refuses_a_bad_attention_kernel(data, tmp_path, capsys):
    from prefloop.cli import main

    args = ["sft", "--model", str(data["policy"]), "--data", str(data["demos"]), "--out", str(tmp_path / "x")]
    try:
        code = main([*args, "--attn-implementation", "fast"])
    except SystemExit as e:  # the option parser exits by itself on a value outside the choices
        code = e.code
    assert code == 2 and not (tmp_path / "x").exists()
    assert "attn-implementation" in capsys.readouterr().err


def test_reference_given_as_an_adapter_directory_keeps_its_adapter(data, tmp_path):
    """--reference pointing at a LoRA run's OUT/model: the reference is that adapted policy, not its base
    (a policy started from the same adapted model then begins at KL 0)."""
    from prefloop.recipes.grpo import GRPOConfig, run_grpo

    _sft(data, tmp_path / "sft", **TINY)
    sft = str(tmp_path / "sft" / "model")
    run_grpo(GRPOConfig(policy=sft, reference=sft, reward=str(data["reward"]), prompts=data["prompts"],
                        out=tmp_path / "grpo", num_generations=2, kl_coef=0.1, **{**RL, "max_steps": 1},
                        max_length=64, lr=1e-2, seed=0))
    assert _last(tmp_path / "grpo", "kl/k1") == pytest.approx(0.0, abs=1e-5)


def test_pretrain_with_gradient_checkpointing(data, tmp_path, monkeypatch):
    from prefloop.recipes.pretrain import PretrainConfig, run_pretrain

    checkpointed = []
    real = lora_module.enable_gradient_checkpointing
    monkeypatch.setattr(lora_module, "enable_gradient_checkpointing", lambda m: (checkpointed.append(m), real(m)))
    run_pretrain(PretrainConfig(data=data["corpus"], out=tmp_path / "pt", max_steps=2, batch_size=4, max_length=32,
                                vocab_size=300, gradient_checkpointing=True, attn_implementation="eager"))
    assert len(checkpointed) == 1 and checkpointed[0].config._attn_implementation == "eager"


@pytest.mark.slow  # two PPO runs of 4 and 2 updates (~8 s)
def test_ppo_with_lora_policy_and_critic_resumes(data, tmp_path):
    """The policy and the critic (a LoRA on the reward model) resume from their checkpointed adapters."""
    from prefloop.recipes.ppo import PPOConfig, run_ppo

    def cfg(out, **kw):
        return PPOConfig(policy=str(data["policy"]), reward=str(data["reward"]), prompts=data["prompts"], out=out,
                         **{**RL, "max_steps": 4}, save_every=2, kl_target=2.0, **TINY, **kw)

    run_ppo(cfg(tmp_path / "full"))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint", tmp_path / "resumed" / "checkpoint")
    run_ppo(cfg(tmp_path / "resumed", resume=True))
    for name in ("model", "critic"):
        a = load_file(str(tmp_path / "full" / name / "adapter_model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / name / "adapter_model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=f"{name}: {k}")


@pytest.mark.slow  # two torchrun launches (~40 s)
def test_lora_with_gradient_checkpointing_on_two_processes_matches_one(data, tmp_path):
    import os
    import re
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["-m", "prefloop.cli", "sft", "--model", str(data["policy"]), "--data", str(data["demos"]),
            "--max-steps", "3", "--batch-size", "8", "--micro-batch-size", "2", "--max-length", "64", "--lr", "1e-2",
            "--lora-r", "4", "--gradient-checkpointing"]
    runs = {}
    for n in (1, 2):
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                              str(n), *args, "--out", str(tmp_path / f"p{n}")], capture_output=True, text=True,
                             env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert {int(w) for w in re.findall(r"on (\d+) process\(es\)", res.stdout + res.stderr)} == {n}
        runs[n] = load_file(str(tmp_path / f"p{n}" / "model" / "adapter_model.safetensors"))
    for k in runs[1]:
        torch.testing.assert_close(runs[2][k], runs[1][k], atol=1e-6, rtol=1e-5, msg=k)
