"""A run killed with SIGKILL right after a checkpoint resumes with --resume and ends where an
uninterrupted run ends (same weights): optimizer, scheduler, RNG, data position and KL state restored."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(args, kill_after=None):
    env = dict(ENV)
    if kill_after is not None:
        env["PREFLOOP_KILL_AFTER_STEP"] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "prefloop.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def weights(d):
    return load_file(str(d / "model.safetensors"))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_sft_resume_after_kill(tmp_path, policy_dir, toy_data):
    args = ["sft", "--model", str(policy_dir), "--data", str(toy_data["demos"]), "--max-steps", "8",
            "--batch-size", "8", "--max-length", "64", "--lr", "1e-3", "--save-every", "3"]
    full = cli(args + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    killed = cli(args + ["--out", str(tmp_path / "k")], kill_after=3)
    assert killed.returncode == -9
    assert (tmp_path / "k" / "checkpoint" / "state.pt").exists() and not (tmp_path / "k" / "model").exists()
    resumed = cli(args + ["--out", str(tmp_path / "k"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(weights(tmp_path / "full" / "model"), weights(tmp_path / "k" / "model"))
    log = (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in log]
    assert steps == list(range(1, 9))


def test_ppo_resume_after_kill(tmp_path, policy_dir, reward_dir, toy_data):
    args = ["ppo", "--policy", str(policy_dir), "--reward", str(reward_dir), "--prompts", str(toy_data["prompts"]),
            "--max-steps", "4", "--rollout-batch-size", "8", "--batch-size", "4", "--max-new-tokens", "6",
            "--max-length", "64", "--lr", "1e-3", "--kl-target", "2", "--save-every", "2"]
    full = cli(args + ["--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    killed = cli(args + ["--out", str(tmp_path / "k")], kill_after=2)
    assert killed.returncode == -9
    resumed = cli(args + ["--out", str(tmp_path / "k"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(weights(tmp_path / "full" / "model"), weights(tmp_path / "k" / "model"))
