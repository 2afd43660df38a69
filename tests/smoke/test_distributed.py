"""Two CPU processes (gloo), really started: the README's `accelerate launch` line and `torchrun` both give a
world of 2, and the numbers are those of one process. sft, reward and dpo: the same losses and weights as one
process on the same global batch. ppo, grpo and rloo: the statistics that span the batch (advantage whitening,
KL, mean score) are those of the two processes' rollouts taken together. sample, rejection-sampling and the
evaluation's sampler: each process draws its own share of the prompts, and no draw repeats another's."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefloop.recipes.dpo import DPOConfig, run_dpo
from prefloop.recipes.reward import RewardConfig, run_reward
from prefloop.recipes.sft import SFTConfig, run_sft
from prefloop.rl import gae, masked_whiten
from prefloop.runtime import read_metrics

from .test_resume import assert_same, weights

# Two processes on one GPU cannot both hold it; on CPU they share the cores (gloo).
pytestmark = pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two processes need two GPUs or none")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2] / "src"),
                                                   os.environ.get("PYTHONPATH")]))}
README = Path(__file__).parents[2] / "README.md"
JOBS = Path(__file__).with_name("ddp_jobs.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(text: str = README.read_text()) -> list[str]:
    """The multi-process line of the README (`accelerate launch ... -m prefloop.cli`), with 2 processes."""
    line = next(x for x in text.splitlines() if x.startswith("accelerate launch") and "-m prefloop.cli" in x)
    words = line.split("-m prefloop.cli")[0].split()
    words[words.index("--num_processes") + 1] = "2"
    return words


def launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`prefloop ARGS` on two processes, started as the README says (on a free port: tests run side by side)."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    cmd = [accelerate, *accelerate_command()[1:], "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "prefloop.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=600)


def torchrun(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=600)


def processes(res: subprocess.CompletedProcess) -> list[int]:
    """The world sizes the runs printed ("<recipe>: N steps on W process(es)")."""
    return [int(w) for w in re.findall(r"on (\d+) process\(es\)", res.stdout + res.stderr)]


def losses(out: Path, key: str) -> list[float]:
    return [r[key] for r in read_metrics(out / "metrics.jsonl") if key in r]


def test_readme_accelerate_line_starts_two_processes_and_sft_matches_one(tmp_path, policy_dir, toy_data):
    """The README's line really starts 2 processes (the installed accelerate runs one for `--cpu
    --num_processes 2`), and DDP over them gives one process's losses and weights."""
    assert "--multi_gpu" in accelerate_command() and "--cpu" not in accelerate_command()
    args = dict(model=str(policy_dir), data=toy_data["demos"], max_steps=3, batch_size=8, max_length=64, lr=3e-3)
    res = launch("sft", "--model", str(policy_dir), "--data", str(toy_data["demos"]), "--out", str(tmp_path / "two"),
                 "--max-steps", "3", "--batch-size", "8", "--max-length", "64", "--lr", "3e-3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert processes(res) == [2], res.stdout[-2000:]
    run_sft(SFTConfig(**args, out=tmp_path / "one"))
    assert losses(tmp_path / "two", "loss/sft") == pytest.approx(losses(tmp_path / "one", "loss/sft"), rel=1e-5)
    assert_same(weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model"))


# -- one torchrun launch runs every other command (one torch import per process for all of them) -------------

def repeated_prompts(d: Path) -> Path:
    """8 copies of one prompt: two processes drawing alike would write equal responses for different rows."""
    path = d / "same_prompt.jsonl"
    path.write_text("".join(json.dumps({"prompt": "User: What is 2 plus 3?\nAssistant:"}) + "\n" for _ in range(8)))
    return path


def reward_args(policy_dir, toy_data, out) -> list[str]:
    return ["--model", str(policy_dir), "--data", str(toy_data["pairs"]), "--out", str(out), "--max-steps", "3",
            "--batch-size", "8", "--max-length", "64", "--lr", "1e-3", "--eval-fraction", "0"]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, policy_dir, reward_dir, toy_data):
    d = tmp_path_factory.mktemp("ddp")
    same = repeated_prompts(d)
    rl = ["--prompts", str(toy_data["prompts"]), "--max-steps", "2", "--max-new-tokens", "6", "--max-length", "64",
          "--lr", "1e-3", "--rollout-batch-size", "8"]
    group = ["--policy", str(policy_dir), "--reward", str(reward_dir), "--num-generations", "2", "--batch-size", "4",
             *rl]
    jobs = [
        ["reward", *reward_args(policy_dir, toy_data, d / "reward")],
        ["dpo", *reward_args(policy_dir, toy_data, d / "dpo")],
        ["ppo", "--policy", str(policy_dir), "--reward", str(reward_dir), "--out", str(d / "ppo"), "--batch-size", "4",
         *rl],
        ["grpo", *group, "--out", str(d / "grpo")],
        ["rloo", *group, "--out", str(d / "rloo")],
        ["sample", "--model", str(policy_dir), "--prompts", str(same), "--num-samples", "2", "--max-new-tokens", "8",
         "--out", str(d / "samples.jsonl")],
        ["rejection-sampling", "--policy", str(policy_dir), "--prompts", str(same), "--reward", str(reward_dir),
         "--rounds", "1", "--num-samples", "2", "--max-steps", "1", "--batch-size", "4", "--max-new-tokens", "6",
         "--max-length", "64", "--out", str(d / "rs")],
        ["eval-sampling", str(policy_dir), str(same), str(d / "eval")],
    ]
    (d / "jobs.json").write_text(json.dumps({"out": str(d), "jobs": jobs}))
    res = torchrun(str(JOBS), str(d / "jobs.json"))
    return d, res


def test_torchrun_runs_every_command_on_two_processes(ddp):
    d, res = ddp
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [json.loads((d / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["codes"] == [0] * 8
    # reward, dpo, ppo, grpo, rloo and the SFT of rejection sampling each report a world of 2.
    assert processes(res) == [2] * 6, res.stdout[-3000:]


def test_reward_and_dpo_match_one_process(ddp, tmp_path, policy_dir, toy_data):
    d, _ = ddp
    common = dict(model=str(policy_dir), data=toy_data["pairs"], max_steps=3, batch_size=8, max_length=64, lr=1e-3,
                  eval_fraction=0.0)
    run_reward(RewardConfig(**common, out=tmp_path / "reward"))
    run_dpo(DPOConfig(**common, out=tmp_path / "dpo"))
    for name, key in (("reward", "loss/reward"), ("dpo", "loss/dpo")):
        one, two = losses(tmp_path / name, key), losses(d / name, key)
        assert len(one) == 3 and two == pytest.approx(one, rel=1e-5), name
        assert_same(weights(tmp_path / name / "model"), weights(d / name / "model"))


def rollouts(out: Path, n: int) -> list[dict]:
    """Update n's rollout batch of each process."""
    return [torch.load(out / f"rollout-rank{r}-{n}.pt") for r in (0, 1)]


def cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """Stack (B, R_r) batches whose response lengths differ, padding with zeros (outside every mask)."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def seq_kl(parts: list[dict]) -> torch.Tensor:
    return torch.cat([((p["logprobs"] - p["ref_logprobs"]) * p["response_mask"]).sum(1) for p in parts])


def test_ppo_whitening_and_kl_are_over_both_processes(ddp):
    """Advantages are whitened with the mean and variance of both processes' tokens (what one process would
    compute on the same rollouts), and the logged KL and score are means over both processes' samples."""
    d, _ = ddp
    rows = read_metrics(d / "ppo" / "metrics.jsonl")
    for update in (1, 2):
        parts = rollouts(d / "ppo", update)
        assert [p["response_mask"].shape[0] for p in parts] == [4, 4]
        raw = [gae(p["rewards"], p["values"], p["response_mask"].float(), 1.0, 0.95)[0] for p in parts]
        mask = cat_rows([p["response_mask"].float() for p in parts])
        got = cat_rows([p["advantages"] for p in parts])
        torch.testing.assert_close(got, masked_whiten(cat_rows(raw), mask), atol=1e-5, rtol=1e-4)
        local = cat_rows([masked_whiten(a, p["response_mask"].float()) for a, p in zip(raw, parts)])
        assert float((local - got).abs().max()) > 1e-3  # whitening each process alone would differ
        m = rows[update - 1]
        assert m["kl/k1"] == pytest.approx(float(seq_kl(parts).mean()), abs=1e-5)
        scores = torch.cat([p["scores"] for p in parts])
        assert m["rollout/score_mean"] == pytest.approx(float(scores.mean()), abs=1e-5)
    assert rows[1]["kl/k1"] != 0.0  # the second update's policy has moved: a KL to compare


@pytest.mark.parametrize("recipe", ["grpo", "rloo"])
def test_group_recipes_log_kl_over_both_processes(ddp, recipe):
    """GRPO and RLOO: each group lies on one process (its baseline is local), the logged KL spans both."""
    d, _ = ddp
    rows = read_metrics(d / recipe / "metrics.jsonl")
    assert len(rows) == 2
    parts = rollouts(d / recipe, 2)
    assert [p["response_mask"].shape[0] for p in parts] == [4, 4]
    kl = seq_kl(parts)
    assert rows[1]["kl/k1"] == pytest.approx(float(kl.mean()), abs=1e-5)
    assert float((seq_kl(parts[:1]).mean() - kl.mean()).abs()) > 1e-6  # one process's mean would differ
    for p in parts:  # advantages of each group (2 consecutive rows) sum to 0
        assert float(p["advantages"].view(-1, 2).sum(1).abs().max()) < 1e-5


def test_sampling_commands_split_the_prompts(ddp):
    """sample, rejection-sampling and the evaluation's sampler: each process draws 4 of the 8 prompts, the
    results come back in prompt order on every process, and no two draws are alike (8 copies of one prompt:
    processes repeating each other's random stream would write equal responses)."""
    d, _ = ddp
    for r in (0, 1):
        shares = json.loads((d / f"shares-rank{r}.json").read_text())
        # sample; rejection sampling's round 1 and its final check; the evaluation's sampler
        assert shares == [["_sample_and_score", 4]] * 3 + [["_sample_policy", 4]], shares
    records = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    rs = [json.loads(x) for x in (d / "rs" / "round_1" / "samples.jsonl").read_text().splitlines()]
    got = [json.loads((d / "eval" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1]  # every process holds all samples
    for rows in ([r["responses"] for r in records], [r["responses"] for r in rs], got[0]):
        flat = [x for row in rows for x in row]
        assert len(rows) == 8 and len(flat) == 16
        assert len(set(flat)) == 16, flat


@pytest.mark.slow  # three two-process launches per recipe (~40 s each)
@pytest.mark.parametrize("recipe", ["ppo", "grpo", "rloo"])
def test_two_process_resume_after_kill(tmp_path, policy_dir, reward_dir, toy_data, recipe):
    """Killed right after the checkpoint of update 2, resumed: the same weights as an uninterrupted run."""
    args = [recipe, "--policy", str(policy_dir), "--reward", str(reward_dir), "--prompts", str(toy_data["prompts"]),
            "--max-steps", "3", "--rollout-batch-size", "8", "--batch-size", "4", "--max-new-tokens", "6",
            "--max-length", "64", "--lr", "1e-3", "--save-every", "2"]
    if recipe != "ppo":
        args += ["--num-generations", "2"]
    full = torchrun("-m", "prefloop.cli", *args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert processes(full) == [2]
    killed = torchrun("-m", "prefloop.cli", *args, "--out", str(tmp_path / "k"),
                      env={**ENV, "PREFLOOP_KILL_AFTER_STEP": "2"})
    assert killed.returncode != 0 and not (tmp_path / "k" / "model").exists()
    resumed = torchrun("-m", "prefloop.cli", *args, "--out", str(tmp_path / "k"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 2" in resumed.stdout + resumed.stderr
    assert_same(weights(tmp_path / "full" / "model"), weights(tmp_path / "k" / "model"))
    assert [r["step"] for r in read_metrics(tmp_path / "k" / "metrics.jsonl")] == [1, 2, 3]
