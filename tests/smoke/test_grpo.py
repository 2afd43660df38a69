"""GRPO and RLOO on a micro model: the mean reward rises under a toy verifiable reward (a Python scoring
function) and under a reward model; the options reach the loss; bad input gives one line and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch

from prefloop.cli import main
from prefloop.errors import DataError
from prefloop.recipes.grpo import GRPOConfig, RLOOConfig, prompt_batch, run_group, run_grpo, run_rloo
from prefloop.rl.group import group_advantages
from prefloop.runtime import read_metrics

TOY_REWARD = '''
def count_o(prompts, responses):
    """Toy verifiable reward: how many letters 'o' the response has."""
    return [float(r.count("o")) for r in responses]


def wrong_length(prompts, responses):
    return [0.0]
'''


@pytest.fixture
def toy_reward(tmp_path, monkeypatch) -> str:
    (tmp_path / "prefloop_toy_reward.py").write_text(TOY_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "prefloop_toy_reward:count_o"


def config(cls, tmp_path, policy_dir, toy_data, **kw):
    base = dict(policy=str(policy_dir), prompts=toy_data["prompts"], out=tmp_path / cls.__name__, max_steps=3,
                num_generations=4, rollout_batch_size=32, batch_size=32, max_new_tokens=8, lr=1e-2, max_length=64)
    base.update(kw)
    return cls(**base)


def weights_after(cfg) -> torch.Tensor:
    from safetensors.torch import load_file

    saved = load_file(str(cfg.out / "model" / "model.safetensors"))
    return torch.cat([saved[k].flatten() for k in sorted(saved)])


def first_last(rows, key="rollout/score_mean", n=5):
    return sum(r[key] for r in rows[:n]) / n, sum(r[key] for r in rows[-n:]) / n


@pytest.mark.parametrize("cls,run", [(GRPOConfig, run_grpo), (RLOOConfig, run_rloo)])
def test_toy_reward_rises(tmp_path, policy_dir, toy_data, toy_reward, cls, run):
    cfg = config(cls, tmp_path, policy_dir, toy_data, reward_fn=toy_reward, max_steps=40)
    meta = run(cfg)
    rows = read_metrics(cfg.out / "metrics.jsonl")
    assert len(rows) == 40
    first, last = first_last(rows)
    assert last > first + 3.0, (first, last)  # from about 0.2 letters "o" per response to more than 10
    # On-policy (one epoch, one minibatch): the ratio is exactly 1 and the sampler's log-probs are the
    # training forward's (docs/ppo.md item 19).
    assert all(r["policy/ratio_mean"] == pytest.approx(1.0) and r["policy/clipfrac"] == 0.0 for r in rows)
    assert max(r["rollout/logprob_gap"] for r in rows) < 1e-4
    # The policy moved away from the reference, and the KL was measured and charged where configured.
    assert rows[-1]["kl/k1"] > rows[0]["kl/k1"]
    assert ("loss/kl" in rows[-1]) == (not cfg.kl_in_reward)
    assert ("rollout/kl_penalty" in rows[-1]) == cfg.kl_in_reward
    assert (cfg.out / "model" / "model.safetensors").exists()
    assert meta["recipe"] == cls.__name__[:-6].lower() and meta["reward"] == f"--reward-fn {toy_reward}"


def test_rloo_with_reward_model_raises_its_score(tmp_path, policy_dir, reward_dir, toy_data):
    cfg = config(RLOOConfig, tmp_path, policy_dir, toy_data, reward=str(reward_dir), max_steps=20, lr=3e-3,
                 kl_coef=0.01)
    run_rloo(cfg)
    first, last = first_last(read_metrics(cfg.out / "metrics.jsonl"), n=4)
    assert last > first + 0.5, (first, last)


def test_grpo_with_reward_model_raises_its_score(tmp_path, policy_dir, reward_dir, toy_data):
    cfg = config(GRPOConfig, tmp_path, policy_dir, toy_data, reward=str(reward_dir), max_steps=20, lr=3e-3)
    run_grpo(cfg)
    first, last = first_last(read_metrics(cfg.out / "metrics.jsonl"), n=4)
    assert last > first + 0.5, (first, last)


def test_several_epochs_use_the_clipped_ratio(tmp_path, policy_dir, toy_data, toy_reward):
    cfg = config(GRPOConfig, tmp_path, policy_dir, toy_data, reward_fn=toy_reward, max_steps=2, epochs_per_rollout=3,
                 batch_size=16, loss_aggregation="token", scale_rewards=False)
    run_grpo(cfg)
    rows = read_metrics(cfg.out / "metrics.jsonl")
    # Old log-probs come from a separate forward that matches the sampler; after the first optimizer
    # step the policy differs from the sampling policy, so ratios move and some get clipped at lr 1e-2.
    assert max(r["rollout/logprob_gap"] for r in rows) < 1e-4
    assert max(r["policy/clipfrac"] for r in rows) > 0.0
    assert any(abs(r["policy/ratio_mean"] - 1.0) > 1e-4 for r in rows)


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_micro_batches_match_full_batch(tmp_path, policy_dir, toy_data, toy_reward, aggregation):
    """Gradient accumulation gives the same update as one batch, for both ways of averaging."""
    params = []
    for micro in (None, 4):
        cfg = config(GRPOConfig, tmp_path / str(micro), policy_dir, toy_data, reward_fn=toy_reward, max_steps=1,
                     micro_batch_size=micro, loss_aggregation=aggregation, seed=3, lr=1e-3)
        run_group(cfg, "grpo", group_advantages)
        params.append(weights_after(cfg))
    torch.testing.assert_close(params[0], params[1], atol=2e-5, rtol=1e-4)


def test_groups_are_consecutive_samples_of_one_prompt(tmp_path, policy_dir, toy_data, toy_reward):
    cfg = config(RLOOConfig, tmp_path, policy_dir, toy_data, reward_fn=toy_reward, num_generations=8,
                 rollout_batch_size=16, batch_size=16)
    idx = prompt_batch(cfg, 0, 1, 64, 0)
    assert len(idx) == 2 and len(set(idx)) == 2
    assert prompt_batch(cfg, 0, 1, 64, 1) != idx  # the next update takes the next prompts
    # Two processes take the two halves of one process's prompts of an update.
    assert prompt_batch(cfg, 0, 2, 64, 0) + prompt_batch(cfg, 1, 2, 64, 0) == idx


def test_world_gold_reward_fn_and_bad_world_prompt(tmp_path, policy_dir, toy_data):
    """world:DIR scores with the world's gold judge (the toy arithmetic prompts are world questions); a
    prompt that is not one of its questions fails before training, naming the file and line."""
    from prefloop.world import WorldConfig, build_world, write_world

    world = write_world(build_world(WorldConfig.preset("tiny")), tmp_path / "world")
    cfg = config(GRPOConfig, tmp_path, policy_dir, toy_data, reward_fn=f"world:{world}", max_steps=1,
                 rollout_batch_size=8, batch_size=8)
    rows = (run_grpo(cfg), read_metrics(cfg.out / "metrics.jsonl"))[1]
    assert rows[0]["rollout/score_mean"] < 0  # random text: unrecognised sentences cost -1 each
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "User: What is 2 plus 3?\\nAssistant:"}\n\n{"prompt": "User: Tell me a joke."}\n')
    cfg = config(GRPOConfig, tmp_path / "bad", policy_dir, toy_data, reward_fn=f"world:{world}", prompts=bad)
    with pytest.raises(DataError, match=r"bad.jsonl:3: prompt is not a question of the world"):
        run_grpo(cfg)
    assert not cfg.out.exists()


# ------------------------------------------------------------------------------------------- CLI


def cli_error(capsys, *args) -> str:
    assert main(list(args)) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_help_documents_options(capsys):
    for cmd in ("grpo", "rloo"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        for flag in ("--num-generations", "--kl-coef", "--kl-in-reward", "--epochs-per-rollout", "--reward",
                     "--reward-fn", "--loss-aggregation"):
            assert flag in text, (cmd, flag)
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    assert "--no-scale-rewards" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["grpo", "rloo"])
def test_cli_bad_input(tmp_path, policy_dir, toy_data, toy_reward, capsys, cmd):
    base = [cmd, "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--out", str(tmp_path / "o")]
    assert "--reward" in cli_error(capsys, *base) and "--reward-fn" in cli_error(capsys, *base)
    line = cli_error(capsys, *base, "--reward-fn", "no_such_module_xyz:score")
    assert "cannot import module 'no_such_module_xyz'" in line
    line = cli_error(capsys, *base, "--reward-fn", "prefloop_toy_reward:nothing")
    assert "has no attribute 'nothing'" in line
    assert "package.module:function" in cli_error(capsys, *base, "--reward-fn", "just_a_name")
    assert "not both" in cli_error(capsys, *base, "--reward-fn", toy_reward, "--reward", str(policy_dir))
    assert "--num-generations" in cli_error(capsys, *base, "--reward-fn", toy_reward, "--num-generations", "1")
    line = cli_error(capsys, *base, "--reward-fn", toy_reward, "--num-generations", "3", "--rollout-batch-size", "64")
    assert "multiple of --num-generations" in line
    line = cli_error(capsys, *base, "--reward-fn", "prefloop_toy_reward:wrong_length")
    assert "prefloop_toy_reward:wrong_length: returned 1 scores for 2 responses" in line
    assert not (tmp_path / "o" / "model").exists()


def test_cli_runs_with_a_reward_fn(tmp_path, policy_dir, toy_data, toy_reward):
    out = tmp_path / "cli"
    assert main(["rloo", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--out", str(out),
                 "--reward-fn", toy_reward, "--max-steps", "2", "--rollout-batch-size", "8", "--batch-size", "8",
                 "--max-new-tokens", "4", "--max-length", "64"]) == 0
    meta = json.loads((out / "prefloop.json").read_text())
    assert meta["config"]["reward_fn"] == toy_reward and meta["config"]["kl_in_reward"] is True


def test_reward_ensemble_is_accepted(tmp_path, policy_dir, reward_dir, toy_data):
    """Two copies of one reward model under mean - lambda * std agree with the single model (std 0)."""
    means = []
    for spec, mode in ((str(reward_dir), "mean"), (f"{reward_dir},{reward_dir}", "mean-std")):
        cfg = config(GRPOConfig, tmp_path / mode, policy_dir, toy_data, reward=spec, ensemble_mode=mode,
                     ensemble_lambda=2.0, rollout_batch_size=8, batch_size=8, seed=4, max_steps=1)
        run_grpo(cfg)
        means.append(read_metrics(cfg.out / "metrics.jsonl")[0]["rollout/score_mean"])
    assert means[0] == pytest.approx(means[1], abs=1e-5)


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, policy_dir, toy_data):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    (tmp_path / "prefloop_toy_reward.py").write_text(TOY_REWARD)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    args = [sys.executable, "-m", "prefloop.cli", "grpo", "--policy", str(policy_dir), "--prompts",
            str(toy_data["prompts"]), "--reward-fn", "prefloop_toy_reward:count_o", "--max-steps", "4",
            "--rollout-batch-size", "16", "--batch-size", "8", "--epochs-per-rollout", "2", "--max-new-tokens", "6",
            "--max-length", "64", "--lr", "1e-3", "--save-every", "2"]

    def cli(out, *extra, kill=None):
        e = {**env, "PREFLOOP_KILL_AFTER_STEP": str(kill)} if kill else env
        return subprocess.run(args + ["--out", str(out), *extra], capture_output=True, text=True, env=e, timeout=600)

    assert cli(tmp_path / "full").returncode == 0
    assert cli(tmp_path / "k", kill=2).returncode == -9
    resumed = cli(tmp_path / "k", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("full", "k"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    steps = [json.loads(x)["step"] for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
