"""Two CPU processes (accelerate launch --num_processes 2 --cpu): sft, reward and ppo run and agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def launch(*args: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [accelerate, "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "prefloop.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def two_proc_runs(tmp_path_factory, policy_dir, reward_dir, toy_data):
    d = tmp_path_factory.mktemp("ddp")
    runs = {
        "sft": launch("sft", "--model", str(policy_dir), "--data", str(toy_data["demos"]), "--out", str(d / "sft"),
                      "--max-steps", "6", "--batch-size", "8", "--max-length", "64", "--lr", "3e-3"),
        "reward": launch("reward", "--model", str(policy_dir), "--data", str(toy_data["pairs"]), "--out",
                         str(d / "reward"), "--max-steps", "6", "--batch-size", "8", "--max-length", "64"),
        "ppo": launch("ppo", "--policy", str(policy_dir), "--reward", str(reward_dir), "--prompts",
                      str(toy_data["prompts"]), "--out", str(d / "ppo"), "--max-steps", "2", "--rollout-batch-size",
                      "8", "--batch-size", "4", "--max-new-tokens", "6", "--max-length", "64"),
    }
    return d, runs


@pytest.mark.parametrize("recipe", ["sft", "reward", "ppo"])
def test_two_process_run(two_proc_runs, recipe):
    d, runs = two_proc_runs
    res = runs[recipe]
    assert res.returncode == 0, res.stderr[-3000:]
    assert (d / recipe / "model" / "model.safetensors").exists()
    rows = [json.loads(x) for x in (d / recipe / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "eval/accuracy" not in r]
    assert train_rows, "main process logs metrics"
    assert len({r["step"] for r in train_rows}) == len(train_rows), "only one process writes the log"
