"""FSDP2 through accelerate on two real CPU processes (gloo), started with the shipped config file
(`accelerate launch --config_file examples/accelerate/fsdp2.yaml`). Every trainer's parameters are DTensors
of which each process holds a part; the losses are those of one process on the same global batch (sft, reward,
dpo) or of a data-parallel run on the same two random streams (ppo, grpo, rloo: sampling each process's own
rollout); the saved model is a full Hugging Face directory that plain transformers loads and that computes what
the unsharded model computes; a run killed after a checkpoint resumes to the weights of an uninterrupted run.
LoRA trains sharded to one process's adapter. Launches prefloop does not run correctly sharded (FSDP1) stop
with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefloop.errors import ConfigError
from prefloop.recipes.context import resume_differences, run_record
from prefloop.recipes.dpo import DPOConfig, run_dpo
from prefloop.recipes.reward import RewardConfig, run_reward
from prefloop.recipes.sft import SFTConfig, run_sft
from prefloop.runtime import read_metrics

from .test_distributed import ENV, JOBS, free_port, losses, processes, torchrun

pytestmark = pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two processes need two GPUs or none")

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "examples" / "accelerate" / "fsdp2.yaml"
SHARDED_JOBS = Path(__file__).with_name("sharded_jobs.py")


def launch_sharded(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file examples/accelerate/fsdp2.yaml ARGS` (2 processes) on a free port."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    cmd = [accelerate, "launch", "--config_file", str(CONFIG), "--num_processes", "2", "--main_process_port",
           str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=600)


def run_jobs(d: Path, jobs: list[list[str]], sharded: bool = True) -> subprocess.CompletedProcess:
    (d / "jobs.json").write_text(json.dumps({"out": str(d), "jobs": jobs}))
    jobs_file = str(d / "jobs.json")
    return launch_sharded(str(SHARDED_JOBS), jobs_file) if sharded else torchrun(str(JOBS), jobs_file)


def close(a: dict, b: dict) -> None:
    """Weights equal up to the rounding of another reduction order (FSDP2 reduce-scatters, DDP all-reduces)."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=3e-5, rtol=1e-4, msg=k)


def said(res: subprocess.CompletedProcess) -> str:
    """What the run printed, with the console's line wrapping undone."""
    return " ".join((res.stdout + res.stderr).split())


def weights(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def assert_sharded(d: Path, recipes: list[str], kind: str = "prepared") -> None:
    """Each process prepared these recipes' models (kind "frozen": placed their frozen models) as DTensors and
    holds a part of their elements: together the two parts are the whole model, neither is all of it."""
    ranks = [json.loads((d / f"{kind}-rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["recipe"] for p in ranks[0]] == recipes == [p["recipe"] for p in ranks[1]]
    for a, b in zip(*ranks):
        assert a["dtensors"] == a["params"] > 0 and a["total"] == b["total"]
        assert a["local"] + b["local"] == a["total"] and 0 < a["local"] < a["total"], (a, b)


def lm_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits


def sft_args(policy_dir, toy_data, out, *more: str) -> list[str]:
    return ["sft", "--model", str(policy_dir), "--data", str(toy_data["demos"]), "--out", str(out), "--max-steps",
            "3", "--batch-size", "8", "--max-length", "64", "--lr", "3e-3", *more]


def test_sft_under_fsdp2_matches_one_process_and_saves_a_full_model(tmp_path, policy_dir, toy_data):
    """sft sharded over 2 processes: each holds half of every weight; the losses and the saved weights are one
    process's; plain transformers loads OUT/model and computes the one-process model's logits. A batch that
    does not split evenly over the processes is refused (exit code 2) before a model loads."""
    odd = sft_args(policy_dir, toy_data, tmp_path / "odd")
    odd[odd.index("--batch-size") + 1] = "7"
    res = run_jobs(tmp_path, [sft_args(policy_dir, toy_data, tmp_path / "two"), odd])
    assert res.returncode != 0, res.stderr[-3000:]  # the launcher reports the refused job as a failure
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["codes"] == [0, 2]
    assert "--batch-size 7 must be a multiple of the number of processes (2) under FSDP2" in said(res)
    assert not (tmp_path / "odd").exists()
    assert processes(res) == [2] and "sharded (FSDP2)" in said(res)
    assert_sharded(tmp_path, ["sft"])
    run_sft(SFTConfig(model=str(policy_dir), data=toy_data["demos"], max_steps=3, batch_size=8, max_length=64,
                      lr=3e-3, out=tmp_path / "one"))
    assert losses(tmp_path / "two", "loss/sft") == pytest.approx(losses(tmp_path / "one", "loss/sft"), rel=1e-5)
    close(weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model"))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    torch.testing.assert_close(lm_logits(tmp_path / "two" / "model", ids), lm_logits(tmp_path / "one" / "model", ids),
                               atol=1e-4, rtol=1e-4)


def test_fsdp1_launch_is_refused(tmp_path, monkeypatch, policy_dir, toy_data):
    """accelerate's FSDP1 launch stops with one line naming what to use, before the output directory is touched
    (DeepSpeed: tests/smoke/test_deepspeed.py)."""
    cfg = SFTConfig(model=str(policy_dir), data=toy_data["demos"], max_steps=1, out=tmp_path / "out")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP1 .* use FSDP2, fsdp_version: 2"):
        run_sft(cfg)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_checkpoint_of_another_layout(tmp_path, monkeypatch, toy_data):
    """A sharded checkpoint's optimizer state is keyed by parameter name, a data-parallel one's by position: a
    resume across the two is refused, naming the difference."""
    cfg = SFTConfig(model="m", data=toy_data["demos"], out=tmp_path)
    plain = run_record(cfg, world=2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    sharded = run_record(cfg, world=2)
    assert resume_differences(sharded, run_record(cfg, world=2)) == []
    assert resume_differences(plain, sharded) == ["sharding none -> fsdp2"]
    assert resume_differences(sharded, plain) == ["sharding fsdp2 -> none"]


# -- every other trainer in one sharded launch, compared with one process or with data-parallel -------------

def rl_jobs(policy_dir, reward_dir, toy_data, d: Path) -> list[list[str]]:
    rl = ["--prompts", str(toy_data["prompts"]), "--max-steps", "2", "--max-new-tokens", "6", "--max-length", "64",
          "--lr", "1e-3", "--rollout-batch-size", "8", "--reward", str(reward_dir), "--policy", str(policy_dir)]
    group = [*rl, "--num-generations", "2", "--batch-size", "4"]
    return [["ppo", *rl, "--batch-size", "4", "--keep-every", "1", "--out", str(d / "ppo")],
            ["ppo", *rl, "--batch-size", "4", "--critic", "value-head", "--out", str(d / "ppo-head")],
            ["grpo", *group, "--out", str(d / "grpo")], ["rloo", *group, "--out", str(d / "rloo")]]


def pair_args(policy_dir, toy_data, out) -> list[str]:
    return ["--model", str(policy_dir), "--data", str(toy_data["pairs"]), "--out", str(out), "--max-steps", "3",
            "--batch-size", "8", "--max-length", "64", "--lr", "1e-3", "--eval-fraction", "0.1"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, policy_dir, reward_dir, toy_data):
    d = tmp_path_factory.mktemp("fsdp2")
    jobs = [["reward", *pair_args(policy_dir, toy_data, d / "reward")],
            ["dpo", *pair_args(policy_dir, toy_data, d / "dpo")],
            *rl_jobs(policy_dir, reward_dir, toy_data, d),
            ["rejection-sampling", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--reward",
             str(reward_dir), "--rounds", "1", "--prompts-per-round", "4", "--num-samples", "2", "--max-steps", "1",
             "--batch-size", "4", "--max-new-tokens", "6", "--max-length", "64", "--out", str(d / "rs")]]
    res = run_jobs(d, jobs)
    ddp = tmp_path_factory.mktemp("ddp")
    ddp_res = run_jobs(ddp, rl_jobs(policy_dir, reward_dir, toy_data, ddp), sharded=False)
    return d, res, ddp, ddp_res


@pytest.mark.slow  # two launches of 7 and 4 trainers (~2 minutes)
def test_every_trainer_trains_sharded(sharded):
    d, res, _, ddp_res = sharded
    assert res.returncode == 0, res.stderr[-4000:]
    assert ddp_res.returncode == 0, ddp_res.stderr[-4000:]
    assert json.loads((d / "rank0.json").read_text())["codes"] == [0] * 7
    assert processes(res) == [2] * 7 and said(res).count("sharded (FSDP2)") == 7
    # PPO with a critic prepares one module holding both (accelerate's FSDP2 shards one model per prepare).
    assert_sharded(d, ["reward", "dpo", "ppo", "ppo", "grpo", "rloo", "sft"])
    # The frozen models too: DPO's reference; the reference and the reward model of ppo, grpo and rloo.
    assert_sharded(d, ["dpo"] + ["ppo"] * 4 + ["grpo"] * 2 + ["rloo"] * 2, kind="frozen")


@pytest.mark.slow
def test_reward_and_dpo_match_one_process(sharded, tmp_path, policy_dir, toy_data):
    d = sharded[0]
    common = dict(model=str(policy_dir), data=toy_data["pairs"], max_steps=3, batch_size=8, max_length=64, lr=1e-3,
                  eval_fraction=0.1)
    run_reward(RewardConfig(**common, out=tmp_path / "reward"))
    run_dpo(DPOConfig(**common, out=tmp_path / "dpo"))
    for name, key in (("reward", "loss/reward"), ("dpo", "loss/dpo")):
        one, two = losses(tmp_path / name, key), losses(d / name, key)
        assert len(one) == 3 and two == pytest.approx(one, rel=1e-5), name
        close(weights(tmp_path / name / "model"), weights(d / name / "model"))
        # The held-out evaluation ran on gathered weights: the same numbers as one process's.
        held = [json.loads((p / name / "prefloop.json").read_text())["metrics"] for p in (tmp_path, d)]
        assert held[0]["eval/accuracy"] == held[1]["eval/accuracy"]
        assert held[1]["eval/margin"] == pytest.approx(held[0]["eval/margin"], rel=1e-4), name


RL_KEYS = ("rollout/score_mean", "kl/k1", "rollout/response_length", "grad_norm")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["ppo", "ppo-head", "grpo", "rloo"])
def test_rl_under_fsdp2_matches_data_parallel(sharded, recipe):
    """The same two processes' random streams sample the same rollouts from sharded weights as from whole
    ones, and train to the same weights (policy and critic)."""
    d, _, ddp, _ = sharded
    rows, ref = read_metrics(d / recipe / "metrics.jsonl"), read_metrics(ddp / recipe / "metrics.jsonl")
    assert len(rows) == len(ref) == 2
    for a, b in zip(rows, ref):
        for k in RL_KEYS:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (recipe, k)
    assert rows[1]["kl/k1"] != 0.0  # the policy moved between the updates
    close(weights(ddp / recipe / "model"), weights(d / recipe / "model"))
    if recipe == "ppo":
        close(weights(ddp / "ppo" / "critic"), weights(d / "ppo" / "critic"))
        close(weights(ddp / "ppo" / "checkpoints" / "step-1"), weights(d / "ppo" / "checkpoints" / "step-1"))
    if recipe == "ppo-head":
        close(torch.load(ddp / recipe / "value_head.pt"), torch.load(d / recipe / "value_head.pt"))


@pytest.mark.slow
def test_sharded_saves_load_in_plain_transformers(sharded):
    """Every OUT/model (and PPO's critic) of the sharded runs is a full checkpoint: plain transformers loads it
    and computes the data-parallel model's outputs."""
    from transformers import AutoModelForSequenceClassification

    d, _, ddp, _ = sharded
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    for name in ("ppo", "grpo", "rloo"):
        torch.testing.assert_close(lm_logits(d / name / "model", ids), lm_logits(ddp / name / "model", ids),
                                   atol=1e-4, rtol=1e-4)
    # Rejection sampling's sharded SFT step: a full model, moved away from the policy it started from.
    rs, start = weights(d / "rs" / "model"), weights(d / "grpo" / "model")
    assert rs.keys() == start.keys() and lm_logits(d / "rs" / "model", ids).isfinite().all()
    critic = AutoModelForSequenceClassification.from_pretrained(d / "ppo" / "critic").eval()
    critic_ddp = AutoModelForSequenceClassification.from_pretrained(ddp / "ppo" / "critic").eval()
    with torch.no_grad():
        torch.testing.assert_close(critic(ids).logits, critic_ddp(ids).logits, atol=1e-4, rtol=1e-4)


# -- resume from a checkpoint written by sharded processes ----------------------------------------------------

def resume_args(recipe: str, policy_dir, reward_dir, toy_data) -> list[str]:
    if recipe == "sft":
        args = sft_args(policy_dir, toy_data, "OUT", "--save-every", "2")
        args[args.index("--max-steps") + 1] = "4"
        return args
    if recipe in ("reward", "dpo"):
        return [recipe, *pair_args(policy_dir, toy_data, "OUT"), "--save-every", "2"]
    args = [recipe, "--policy", str(policy_dir), "--reward", str(reward_dir), "--prompts", str(toy_data["prompts"]),
            "--max-steps", "3", "--rollout-batch-size", "8", "--batch-size", "4", "--max-new-tokens", "6",
            "--max-length", "64", "--lr", "1e-3", "--save-every", "2", "--out", "OUT"]
    return args + (["--num-generations", "2"] if recipe != "ppo" else [])


def full_and_killed(tmp_path: Path, args: list[str]):
    """The sharded run of `args` uninterrupted into tmp_path/full, and killed after the checkpoint of step 2 into
    tmp_path/k; returns the call that resumes the killed one."""
    def run(out: Path, env: dict | None = None, *more: str) -> subprocess.CompletedProcess:
        return launch_sharded("-m", "prefloop.cli", *[str(out) if a == "OUT" else a for a in args], *more, env=env)

    full = run(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    assert processes(full) == [2] and "sharded (FSDP2)" in said(full)
    killed = run(tmp_path / "k", {**ENV, "PREFLOOP_KILL_AFTER_STEP": "2"})
    assert killed.returncode != 0 and not (tmp_path / "k" / "model").exists()
    return lambda: run(tmp_path / "k", None, "--resume")


@pytest.mark.slow  # three sharded launches per trainer (~40 s)
@pytest.mark.parametrize("recipe", ["sft", "reward", "dpo", "ppo", "grpo"])
def test_sharded_resume_after_kill(tmp_path, policy_dir, reward_dir, toy_data, recipe):
    """Killed right after the sharded checkpoint of step 2, resumed under FSDP2: the weights (and PPO's critic)
    of an uninterrupted sharded run, and the steps after 2 logged once."""
    args = resume_args(recipe, policy_dir, reward_dir, toy_data)
    resume = full_and_killed(tmp_path, args)
    resumed = resume()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 2" in said(resumed)
    close(weights(tmp_path / "full" / "model"), weights(tmp_path / "k" / "model"))
    if recipe == "ppo":
        close(weights(tmp_path / "full" / "critic"), weights(tmp_path / "k" / "critic"))
    steps = [r["step"] for r in read_metrics(tmp_path / "k" / "metrics.jsonl") if "lr" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3


# -- LoRA under FSDP2 ------------------------------------------------------------------------------------------

def adapter(d: Path) -> dict:
    return load_file(str(d / "adapter_model.safetensors"))


def peft_logits(path: Path, base: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).eval()(ids).logits


def test_gathered_weights_save_the_whole_adapter(tmp_path, policy_dir):
    """One process, fast: a LoRA model saved from a given state dict keyed as the model names its tensors (what a
    sharded model's gathered weights are) writes every adapter matrix, and peft loads it to the same outputs."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from prefloop.models.lora import add_lora

    lm = add_lora(AutoModelForCausalLM.from_pretrained(policy_dir), 4, 8.0, 0.0, None).eval()
    with torch.no_grad():  # B starts at zero: give the adapter an effect on the outputs
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    lm.save_pretrained(tmp_path / "a", state_dict={k: v.clone() for k, v in lm.state_dict().items()})
    assert len(adapter(tmp_path / "a")) == sum("lora_" in n for n, _ in lm.named_parameters()) > 0
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        torch.testing.assert_close(peft_logits(tmp_path / "a", policy_dir, ids), lm(ids).logits)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, policy_dir, reward_dir, toy_data):
    """One sharded launch: sft with an adapter, sft with --merge-lora, grpo with an adapter; grpo with an adapter
    data-parallel on the same two random streams; both sft runs on one process."""
    pytest.importorskip("peft")
    d, ddp, one = (tmp_path_factory.mktemp(n) for n in ("lora-fsdp2", "lora-ddp", "lora-one"))

    def grpo(out: Path) -> list[str]:
        return [*next(j for j in rl_jobs(policy_dir, reward_dir, toy_data, out) if j[0] == "grpo"), "--lora-r", "4"]

    res = run_jobs(d, [sft_args(policy_dir, toy_data, d / "sft", "--lora-r", "4"),
                       sft_args(policy_dir, toy_data, d / "merged", "--lora-r", "4", "--merge-lora"), grpo(d)])
    ddp_res = run_jobs(ddp, [grpo(ddp)], sharded=False)
    common = dict(model=str(policy_dir), data=toy_data["demos"], max_steps=3, batch_size=8, max_length=64, lr=3e-3,
                  lora_r=4)
    run_sft(SFTConfig(**common, out=one / "sft"))
    run_sft(SFTConfig(**common, merge_lora=True, out=one / "merged"))
    return d, res, ddp, ddp_res, one


@pytest.mark.slow  # two launches (~50 s)
def test_lora_sft_under_fsdp2_matches_one_process(lora_runs, policy_dir):
    """Sharded LoRA sft: each process held half of every weight, adapter included; the losses and the adapter
    are one process's; peft loads the adapter, and with --merge-lora plain transformers loads a model that
    computes the one-process merged model's logits (not the base model's)."""
    d, res, _, _, one = lora_runs
    assert res.returncode == 0, res.stderr[-4000:]
    assert processes(res) == [2] * 3 and said(res).count("sharded (FSDP2)") == 3
    assert_sharded(d, ["sft", "sft", "grpo"])
    for name in ("sft", "merged"):
        assert losses(d / name, "loss/sft") == pytest.approx(losses(one / name, "loss/sft"), rel=1e-5), name
    two, ref = adapter(d / "sft" / "model"), adapter(one / "sft" / "model")
    assert len(two) > 0 and any(v.abs().max() > 0 for k, v in two.items() if "lora_B" in k)
    close(ref, two)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    torch.testing.assert_close(peft_logits(d / "sft" / "model", policy_dir, ids),
                               peft_logits(one / "sft" / "model", policy_dir, ids), atol=1e-4, rtol=1e-4)
    merged = lm_logits(d / "merged" / "model", ids)
    torch.testing.assert_close(merged, lm_logits(one / "merged" / "model", ids), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged, lm_logits(policy_dir, ids), atol=1e-4)


@pytest.mark.slow
def test_lora_grpo_under_fsdp2_matches_data_parallel(lora_runs):
    """Sharded LoRA grpo (its reference: the same sharded weights with the adapter off) samples and trains as
    data-parallel LoRA grpo on the same two random streams: the same rollout statistics, KL and adapter."""
    d, res, ddp, ddp_res, _ = lora_runs
    assert res.returncode == 0 and ddp_res.returncode == 0, (res.stderr + ddp_res.stderr)[-4000:]
    rows, ref = read_metrics(d / "grpo" / "metrics.jsonl"), read_metrics(ddp / "grpo" / "metrics.jsonl")
    assert len(rows) == len(ref) == 2
    for a, b in zip(rows, ref):
        for k in RL_KEYS:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    assert rows[1]["kl/k1"] != 0.0  # the adapter moved the policy away from its reference
    close(adapter(ddp / "grpo" / "model"), adapter(d / "grpo" / "model"))


@pytest.mark.slow  # three sharded launches (~60 s)
def test_lora_sharded_resume_after_kill(tmp_path, policy_dir, toy_data):
    """Sharded LoRA sft killed right after the checkpoint of step 2, resumed under FSDP2: the adapter of an
    uninterrupted sharded run (the checkpoint holds the adapter and its optimizer state, sharded again)."""
    pytest.importorskip("peft")
    args = resume_args("sft", policy_dir, None, toy_data) + ["--lora-r", "4"]
    resume = full_and_killed(tmp_path, args)
    assert len(adapter(tmp_path / "k" / "checkpoint" / "model")) > 0
    resumed = resume()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 2" in said(resumed)
    close(adapter(tmp_path / "full" / "model"), adapter(tmp_path / "k" / "model"))
