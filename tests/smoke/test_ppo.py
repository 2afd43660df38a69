"""PPO on micro models: the reward rises, and each docs/ppo.md detail is checked where the recipe applies it."""

from __future__ import annotations

import pytest
import torch

import prefloop.recipes.ppo as ppo
from prefloop.recipes.ppo import PPOConfig, run_ppo
from prefloop.runtime import read_metrics

# docs/ppo.md item 19: what every update must log.
LOGGED = ["rollout/score_mean", "rollout/kl_penalty", "rollout/reward_total", "kl/k1", "kl/k3",
          "policy/entropy", "policy/clipfrac", "policy/approxkl", "loss/value", "value/explained_variance",
          "rollout/response_length", "rollout/no_eos_fraction", "rollout/logprob_gap", "loss/policy", "kl/coef",
          "rollout/reward_raw", "grad_norm"]


def ppo_config(tmp_path, policy_dir, reward_dir, toy_data, **kw) -> PPOConfig:
    base = dict(policy=str(policy_dir), reward=str(reward_dir), prompts=toy_data["prompts"], out=tmp_path / "ppo",
                max_steps=3, rollout_batch_size=16, batch_size=8, max_new_tokens=8, lr=1e-3, max_length=64)
    base.update(kw)
    return PPOConfig(**base)


def first_update(cfg: PPOConfig) -> dict:
    """The metrics of a run's first update (a one-update run without reward normalisation)."""
    cfg.max_steps, cfg.normalize_reward = 1, False
    run_ppo(cfg)
    return read_metrics(cfg.out / "metrics.jsonl")[0]


def weights_after(cfg: PPOConfig) -> torch.Tensor:
    from safetensors.torch import load_file

    saved = load_file(str(cfg.out / "model" / "model.safetensors"))
    return torch.cat([saved[k].flatten() for k in sorted(saved)])


def test_ppo_raises_reward_and_logs_everything(tmp_path, policy_dir, reward_dir, toy_data):
    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, max_steps=20, rollout_batch_size=32, batch_size=16,
                     lr=3e-3, kl_coef=0.01)
    run_ppo(cfg)
    rows = read_metrics(cfg.out / "metrics.jsonl")
    assert len(rows) == 20
    for key in LOGGED:
        assert key in rows[-1], key
    first = sum(r["rollout/score_mean"] for r in rows[:4]) / 4
    last = sum(r["rollout/score_mean"] for r in rows[-4:]) / 4
    assert last > first + 0.5, (first, last)
    # docs/ppo.md item 5/19: log-probs seen while sampling equal those recomputed for training.
    assert max(r["rollout/logprob_gap"] for r in rows) < 1e-4
    assert (cfg.out / "model" / "model.safetensors").exists() and (cfg.out / "critic" / "config.json").exists()


def test_value_head_critic_option(tmp_path, policy_dir, reward_dir, toy_data, monkeypatch):
    """docs/ppo.md item 9: the value head starts at zero, learns from the value loss, and is what the run saves
    (no separate critic)."""
    from prefloop.models import ValueHead

    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, critic="value-head", max_steps=3, lr=3e-3)
    values, policies = [], []
    optimise = ppo.optimise

    def recording(cfg, ctx, policy_fwd, critic_fwd, opt, sched, b, generator):
        values.append(b.values)
        policies.append(policy_fwd)
        return optimise(cfg, ctx, policy_fwd, critic_fwd, opt, sched, b, generator)

    monkeypatch.setattr(ppo, "optimise", recording)
    run_ppo(cfg)
    assert float(values[0].abs().max()) == 0.0  # zero-initialised head: V = 0 on the first rollout
    assert float(values[-1].abs().max()) > 1e-3  # the value loss trained it
    assert not (cfg.out / "critic").exists()
    saved = torch.load(cfg.out / "value_head.pt")
    head = ValueHead(saved["linear.weight"].shape[1])
    head.load_state_dict(saved)
    trained = policies[-1].value_head.state_dict()
    assert all(torch.equal(saved[k], trained[k]) for k in saved) and float(saved["linear.weight"].abs().max()) > 0
    assert "loss/value" in read_metrics(cfg.out / "metrics.jsonl")[-1]


def test_reward_normalisation_centres_initial_scores(tmp_path, policy_dir, reward_dir, toy_data):
    """docs/ppo.md item 10: the initial policy's samples score mean 0, std 1 after the gain and bias."""
    from prefloop.models import load_tokenizer
    from prefloop.recipes.common import sampling_config
    from prefloop.recipes.context import RunContext
    from prefloop.recipes.rl_common import read_rl_prompts, rollout

    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, rollout_batch_size=64, batch_size=64)
    ctx, tok = RunContext("ppo", cfg), load_tokenizer(cfg.policy)
    _, ids = read_rl_prompts(cfg, tok)
    policy_fwd, _, _, rm = ppo.load_models(cfg, ctx, tok)
    gen, sampling = torch.Generator().manual_seed(ctx.process_seed), sampling_config(cfg, tok)

    def prompts(update):
        return [ids[i] for i in ppo.prompt_batch(cfg, 0, 1, len(ids), update)]

    (gain, bias), raw = ppo.calibrate_reward(ctx, policy_fwd, rm, prompts(0), tok, sampling, gen)
    z = raw * gain + bias
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    # A fresh batch of the same policy lands near mean 0, std 1 too (sampling noise only).
    out = rollout(ctx, policy_fwd, prompts(1), tok, sampling, gen)
    with torch.no_grad():
        s = rm(torch.cat([out.query_ids, out.response_ids], 1), torch.cat([out.query_mask, out.response_mask], 1))
    z = s * gain + bias
    assert abs(float(z.mean())) < 0.5 and 0.6 < float(z.std()) < 1.5


def test_no_eos_penalty(tmp_path, policy_dir, reward_dir, toy_data):
    """docs/ppo.md item 4: with 1 new token nothing ends, so every score is the fixed penalty."""
    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, max_new_tokens=1, max_steps=1, no_eos_penalty=-3.0)
    m = first_update(cfg)
    assert m["rollout/no_eos_fraction"] == pytest.approx(1.0)
    assert m["rollout/score_mean"] == pytest.approx(-3.0)


@pytest.mark.parametrize("seed", [1])  # a seed for which "beta ends above its start" did not hold
def test_adaptive_kl_moves_coefficient(tmp_path, policy_dir, reward_dir, toy_data, seed):
    """docs/ppo.md item 14: each update moves beta by the controller's rule applied to the KL that update logs,
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon). The rule, not the sign of the
    sampled KL, is what holds for every seed: k1 of a few samples can be negative, and then even a tiny
    target lowers beta. Update 1 samples the reference itself (KL 0), so beta falls there for any target."""
    target = 1e-6
    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, kl_coef=0.1, kl_target=target, kl_horizon=100,
                     max_steps=3, seed=seed)
    run_ppo(cfg)
    rows = read_metrics(cfg.out / "metrics.jsonl")
    assert rows[0]["kl/coef"] == pytest.approx(0.1 * (1 - 0.2 * 16 / 100))
    beta = 0.1
    for r in rows:
        error = min(max(r["kl/k1"] / target - 1, -0.2), 0.2)
        beta *= 1 + error * cfg.rollout_batch_size / cfg.kl_horizon
        assert r["kl/coef"] == pytest.approx(beta, rel=1e-9)
        assert r["kl/coef"] != pytest.approx(0.1)  # it moved


def test_micro_batches_match_full_batch(tmp_path, policy_dir, reward_dir, toy_data):
    """docs/ppo.md item 17: gradient accumulation over micro-batches gives the same update as one batch."""
    params = []
    for micro in (None, 2):
        cfg = ppo_config(tmp_path / str(micro), policy_dir, reward_dir, toy_data, max_steps=1, ppo_epochs=1,
                         micro_batch_size=micro, seed=3, normalize_reward=False)
        run_ppo(cfg)
        params.append(weights_after(cfg))
    torch.testing.assert_close(params[0], params[1], atol=2e-5, rtol=1e-4)


def test_ppo_defaults_follow_the_references():
    """docs/ppo.md items 3, 11, 15-18: sampling, GAE, clipping and optimiser defaults."""
    c = PPOConfig()
    assert (c.top_k, c.top_p, c.gamma, c.lam, c.clip_eps, c.clip_eps_value, c.vf_coef, c.ppo_epochs) == (
        0, 1.0, 1.0, 0.95, 0.2, 0.2, 0.1, 4)
    assert c.adam_eps == 1e-5 and c.schedule == "linear" and c.no_eos_penalty == -1.0
    from prefloop.recipes.reward import RewardConfig

    assert RewardConfig().epochs == 1.0


def test_keep_every_leaves_loadable_policy_copies(tmp_path, policy_dir, reward_dir, toy_data):
    from transformers import AutoModelForCausalLM

    cfg = ppo_config(tmp_path, policy_dir, reward_dir, toy_data, max_steps=4, keep_every=2)
    run_ppo(cfg)
    kept = sorted(p.name for p in (cfg.out / "checkpoints").iterdir())
    assert kept == ["step-2"]  # the final policy is OUT/model
    m = AutoModelForCausalLM.from_pretrained(cfg.out / "checkpoints" / "step-2")
    final = AutoModelForCausalLM.from_pretrained(cfg.out / "model")
    diffs = [float((a - b).abs().max()) for a, b in zip(m.parameters(), final.parameters())]
    assert max(diffs) > 0  # two more updates moved the policy
