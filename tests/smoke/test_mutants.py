"""Recipe-level properties that the training tests alone do not pin down: each test here fails when the
recipe silently gets one detail wrong (a temperature dropped, a whitening skipped, an option ignored), even
though the run still trains. tests/README.md lists the hand mutation each test was checked against."""

from __future__ import annotations

import pytest
import torch

import prefloop.recipes.grpo as grpo
import prefloop.recipes.ppo as ppo
from prefloop.cli import main
from prefloop.recipes.dpo import DPOConfig, dpo_loss
from prefloop.rl import PairLogprobs, gae, masked_mean, masked_var, masked_whiten

from .test_grpo import toy_reward  # noqa: F401  (fixture)
from .test_ppo import first_update, ppo_config


def capture_rollout(monkeypatch) -> list:
    """Record every RolloutBatch PPO optimises on (and still optimise)."""
    seen = []
    optimise = ppo.optimise

    def recording(cfg, ctx, policy_fwd, critic_fwd, opt, sched, batch, generator):
        seen.append(batch)
        return optimise(cfg, ctx, policy_fwd, critic_fwd, opt, sched, batch, generator)

    monkeypatch.setattr(ppo, "optimise", recording)
    return seen


def test_ppo_reference_logprobs_use_the_sampling_temperature(tmp_path, policy_dir, reward_dir, toy_data):
    """docs/ppo.md item 5: with the reference equal to the policy, the first rollout has KL exactly 0 at any
    temperature; a reference scored at temperature 1 would give a KL of the size of the tempering."""
    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, temperature=0.5, normalize_reward=False)
    m = first_update(cfg)
    assert abs(m["kl/k1"]) < 1e-4 and abs(m["kl/k3"]) < 1e-4, (m["kl/k1"], m["kl/k3"])
    assert m["rollout/response_length"] > 1  # there were tokens to disagree on


def test_ppo_advantages_are_whitened_gae(tmp_path, policy_dir, reward_dir, toy_data, monkeypatch):
    """docs/ppo.md item 15: the optimiser sees GAE advantages whitened over the rollout (masked mean 0, variance 1),
    and returns = raw GAE advantages + values."""
    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, max_steps=1)
    seen = capture_rollout(monkeypatch)
    ppo.run_ppo(cfg)
    b = seen[0]
    mask = b.response_mask.float()
    raw, returns = gae(b.rewards, b.values, mask, cfg.gamma, cfg.lam)
    assert float(masked_mean(b.advantages, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(masked_var(b.advantages, mask)) == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(b.advantages, masked_whiten(raw, mask))
    torch.testing.assert_close(b.returns, returns)
    assert float(masked_var(raw, mask)) != pytest.approx(1.0, abs=1e-2)  # whitening changed something


def test_ppo_reshuffles_every_epoch(tmp_path, policy_dir, reward_dir, toy_data, monkeypatch):
    """docs/ppo.md item 16: each PPO epoch covers the rollout once, in a fresh random order of minibatches."""
    minibatches = []
    real = ppo.minibatches

    def recording(*args):
        for mb in real(*args):
            minibatches.append(list(mb))
            yield mb

    monkeypatch.setattr(ppo, "minibatches", recording)
    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, max_steps=1, ppo_epochs=3, rollout_batch_size=16,
                     batch_size=4, normalize_reward=False)
    ppo.run_ppo(cfg)
    assert len(minibatches) == 3 * 4
    epochs = [sum(minibatches[i:i + 4], []) for i in range(0, 12, 4)]
    for order in epochs:
        assert sorted(order) == list(range(16))  # every rollout row once per epoch
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]


def test_ipo_uses_per_token_average_logprobs():
    """IPO regresses the gap of per-token average log-ratios to 1 / (2 beta); DPO uses sums."""
    def pair(chosen, rejected):  # summed log-probs of a 2-token chosen and a 3-token rejected response
        return PairLogprobs(*(torch.tensor([x]) for x in (chosen, rejected, 2.0, 3.0)))

    policy, ref = pair(-4.0, -9.0), pair(-6.0, -6.0)
    beta = 0.5
    h_avg = (-4.0 / 2 - -6.0 / 2) - (-9.0 / 3 - -6.0 / 3)  # 1 + 1 = 2
    loss, _ = dpo_loss(DPOConfig(loss="ipo", beta=beta), policy, ref)
    assert float(loss) == pytest.approx((h_avg - 1 / (2 * beta)) ** 2)
    h_sum = (-4.0 - -6.0) - (-9.0 - -6.0)  # 5: what sums would give
    loss, _ = dpo_loss(DPOConfig(loss="sigmoid", beta=beta), policy, ref)
    assert float(loss) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-beta * h_sum))))


@pytest.mark.parametrize("flag,scaled", [("--no-scale-rewards", False), (None, True)])
def test_grpo_scale_rewards_option_reaches_the_advantages(tmp_path, policy_dir, toy_data, toy_reward,  # noqa: F811
                                                          monkeypatch, flag, scaled):
    """Through the command line: --no-scale-rewards gives r - group mean (Dr. GRPO), the default divides by
    the group's std (GRPO)."""
    seen = []
    real = grpo.group_advantages

    def recording(rewards, k, **kw):
        adv, stats = real(rewards, k, **kw)
        seen.append((rewards.detach().clone(), adv.detach().clone(), k))
        return adv, stats

    monkeypatch.setattr(grpo, "group_advantages", recording)
    args = ["grpo", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--out", str(tmp_path / "g"),
            "--reward-fn", toy_reward, "--max-steps", "1", "--rollout-batch-size", "16", "--batch-size", "16",
            "--num-generations", "4", "--max-new-tokens", "12", "--max-length", "64", "--seed", "2"]
    assert main(args + ([flag] if flag else [])) == 0
    rewards, adv, k = seen[0]
    groups = rewards.view(-1, k)
    centred = groups - groups.mean(1, keepdim=True)
    std = groups.std(1, keepdim=True)
    assert bool(((std - 1).abs() > 0.1).any()), "the check needs a group whose std is not 1"
    expected = centred / (std + 1e-4) if scaled else centred
    torch.testing.assert_close(adv.view(-1, k), expected, atol=1e-4, rtol=1e-4)
