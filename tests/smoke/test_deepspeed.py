"""DeepSpeed ZeRO-2/3 through accelerate on two real CPU processes (gloo), started with the shipped config files
(`accelerate launch --config_file examples/accelerate/zero3.yaml`). Under ZeRO-3 each process holds a partition of
every parameter; sft, reward and dpo compute one process's losses on the same global batch (with gradient
accumulation too), keep the vocabulary's size, and save a full Hugging Face directory that plain transformers loads
and that computes the one-process model's logits. What prefloop does not run under DeepSpeed stops with one line.
Skipped where deepspeed is not installed (`pip install 'prefloop[deepspeed]'`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefloop.errors import ConfigError
from prefloop.recipes.dpo import DPOConfig, run_dpo
from prefloop.recipes.reward import RewardConfig, run_reward
from prefloop.recipes.sft import SFTConfig, run_sft

from .test_distributed import ENV, free_port, losses, processes
from .test_sharded import RL_KEYS, close, lm_logits, pair_args, rl_jobs, said, sft_args, weights
from .test_sharded import run_jobs as run_ddp

ROOT = Path(__file__).parents[2]
JOBS = Path(__file__).with_name("deepspeed_jobs.py")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED or torch.cuda.device_count() == 1,
                                     reason="needs deepspeed (pip install 'prefloop[deepspeed]'), and two GPUs or none")


def run_jobs(d: Path, jobs: list[list[str]], stage: int = 3) -> subprocess.CompletedProcess:
    """The jobs in one `accelerate launch --config_file examples/accelerate/zero<stage>.yaml` of 2 processes."""
    (d / "jobs.json").write_text(json.dumps({"out": str(d), "jobs": jobs}))
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "examples" / "accelerate" / f"zero{stage}.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()), str(JOBS), str(d / "jobs.json")]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


def assert_partitioned(d: Path, recipes: list[str], stage: int) -> None:
    """Each process prepared these recipes' models under this ZeRO stage; under ZeRO-3 every parameter is
    partitioned and the two processes' partitions together are the whole model, neither all of it."""
    ranks = [json.loads((d / f"prepared-rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["recipe"] for p in ranks[0]] == recipes == [p["recipe"] for p in ranks[1]]
    for a, b in zip(*ranks):
        assert a["stage"] == b["stage"] == stage and a["total"] == b["total"] > 0
        if stage == 3:
            assert a["partitioned"] == a["released"] == a["params"] > 0  # no parameter whole outside a gather
            assert a["local"] + b["local"] >= a["total"] and 0 < a["local"] < a["total"], (a, b)
        else:
            assert a["partitioned"] == a["released"] == 0 and a["local"] == a["total"], a


@needs_deepspeed
def test_sft_under_zero3_matches_one_process_and_saves_a_full_model(tmp_path, policy_dir, toy_data):
    """sft partitioned over 2 processes (ZeRO-3, 2 micro-batches per process and step): the losses and saved
    weights are one process's, the vocabulary keeps its size, and plain transformers loads OUT/model and computes
    the one-process model's logits. pretrain and --save-every are refused (exit code 2) before anything is written."""
    res = run_jobs(tmp_path, [sft_args(policy_dir, toy_data, tmp_path / "two", "--micro-batch-size", "2"),
                              ["pretrain", "--data", str(toy_data["corpus"]), "--out", str(tmp_path / "pre")],
                              sft_args(policy_dir, toy_data, tmp_path / "ckpt", "--save-every", "1")])
    assert (tmp_path / "rank0.json").exists(), res.stderr[-3000:]  # every job ran (a crash writes none)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["codes"] == [0, 2, 2]
    assert "pretrain is not supported under DeepSpeed: only sft, reward, dpo, ppo, grpo, rloo are" in said(res)
    assert "--save-every and --resume are not supported under DeepSpeed" in said(res)
    assert not (tmp_path / "pre").exists() and not (tmp_path / "ckpt").exists()
    assert processes(res) == [2] and "DeepSpeed ZeRO-3" in said(res)
    assert_partitioned(tmp_path, ["sft"], stage=3)
    run_sft(SFTConfig(model=str(policy_dir), data=toy_data["demos"], max_steps=3, batch_size=8, max_length=64,
                      lr=3e-3, micro_batch_size=2, out=tmp_path / "one"))
    assert losses(tmp_path / "two", "loss/sft") == pytest.approx(losses(tmp_path / "one", "loss/sft"), rel=1e-5)
    one, two = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model")
    assert two["model.embed_tokens.weight"].shape == one["model.embed_tokens.weight"].shape
    close(one, two)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    torch.testing.assert_close(lm_logits(tmp_path / "two" / "model", ids), lm_logits(tmp_path / "one" / "model", ids),
                               atol=1e-4, rtol=1e-4)


@needs_deepspeed
@pytest.mark.slow  # two launches (~1 minute)
def test_reward_and_dpo_under_zero3_and_sft_under_zero2_match_one_process(tmp_path, policy_dir, toy_data):
    d3, d2 = tmp_path / "z3", tmp_path / "z2"
    d3.mkdir(), d2.mkdir()
    res = run_jobs(d3, [["reward", *pair_args(policy_dir, toy_data, d3 / "reward")],
                        ["dpo", *pair_args(policy_dir, toy_data, d3 / "dpo")]])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_partitioned(d3, ["reward", "dpo"], stage=3)
    res = run_jobs(d2, [sft_args(policy_dir, toy_data, d2 / "sft", "--micro-batch-size", "2")], stage=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DeepSpeed ZeRO-2" in said(res)
    assert_partitioned(d2, ["sft"], stage=2)
    common = dict(model=str(policy_dir), data=toy_data["pairs"], max_steps=3, batch_size=8, max_length=64, lr=1e-3,
                  eval_fraction=0.1)
    run_reward(RewardConfig(**common, out=tmp_path / "reward"))
    run_dpo(DPOConfig(**common, out=tmp_path / "dpo"))
    run_sft(SFTConfig(model=str(policy_dir), data=toy_data["demos"], max_steps=3, batch_size=8, max_length=64,
                      lr=3e-3, micro_batch_size=2, out=tmp_path / "sft"))
    for name, key, d in (("reward", "loss/reward", d3), ("dpo", "loss/dpo", d3), ("sft", "loss/sft", d2)):
        one, two = losses(tmp_path / name, key), losses(d / name, key)
        assert len(one) == 3 and two == pytest.approx(one, rel=1e-5), name
        close(weights(tmp_path / name / "model"), weights(d / name / "model"))
    # The held-out evaluation read the gathered weights: one process's numbers.
    for name in ("reward", "dpo"):
        one = json.loads((tmp_path / name / "prefloop.json").read_text())["metrics"]
        two = json.loads((d3 / name / "prefloop.json").read_text())["metrics"]
        held = [k for k in one if k.startswith("eval")]
        assert held and [two[k] for k in held] == pytest.approx([one[k] for k in held], rel=1e-4), name


@needs_deepspeed
@pytest.mark.slow  # two launches of 4 and 5 trainers (~2 minutes)
def test_rl_trainers_under_zero3_match_data_parallel(tmp_path, policy_dir, reward_dir, toy_data):
    """ppo (critic or value head), grpo and rloo under ZeRO-3 sample from gathered weights the rollouts that
    data-parallel processes sample on the same random streams, and train to the same policy and critic;
    rejection sampling runs too."""
    d, ddp = tmp_path / "z3", tmp_path / "ddp"
    d.mkdir(), ddp.mkdir()
    rs = ["rejection-sampling", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--reward",
          str(reward_dir), "--rounds", "1", "--prompts-per-round", "4", "--num-samples", "2", "--max-steps", "1",
          "--batch-size", "4", "--max-new-tokens", "6", "--max-length", "64", "--out", str(d / "rs")]
    res = run_jobs(d, [*rl_jobs(policy_dir, reward_dir, toy_data, d), rs])
    assert res.returncode == 0, res.stderr[-4000:]
    assert processes(res)[:4] == [2] * 4 and said(res).count("DeepSpeed ZeRO-3") >= 5
    # PPO with a critic prepares one module holding both (accelerate's DeepSpeed takes one model per prepare).
    assert_partitioned(d, ["ppo", "ppo", "grpo", "rloo", "sft"], stage=3)
    ddp_res = run_ddp(ddp, rl_jobs(policy_dir, reward_dir, toy_data, ddp), sharded=False)
    assert ddp_res.returncode == 0, ddp_res.stderr[-4000:]
    for recipe in ("ppo", "ppo-head", "grpo", "rloo"):
        rows, ref = losses(d / recipe, "grad_norm"), losses(ddp / recipe, "grad_norm")
        assert len(rows) == len(ref) == 2
        for k in RL_KEYS:
            assert losses(d / recipe, k) == pytest.approx(losses(ddp / recipe, k), rel=1e-4, abs=1e-6), (recipe, k)
        close(weights(ddp / recipe / "model"), weights(d / recipe / "model"))
    close(weights(ddp / "ppo" / "critic"), weights(d / "ppo" / "critic"))
    close(weights(ddp / "ppo" / "checkpoints" / "step-1"), weights(d / "ppo" / "checkpoints" / "step-1"))
    close(torch.load(ddp / "ppo-head" / "value_head.pt"), torch.load(d / "ppo-head" / "value_head.pt"))

def test_deepspeed_launches_refused_where_they_cannot_run(tmp_path, monkeypatch, policy_dir, toy_data):
    """A DeepSpeed launch without the deepspeed package, or (without a GPU) with one process, stops in one line
    before the output directory is touched."""
    cfg = SFTConfig(model=str(policy_dir), data=toy_data["demos"], max_steps=1, out=tmp_path / "out")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what an environment without it imports
    with pytest.raises(ConfigError, match=r"asks for DeepSpeed, which is not importable .*prefloop\[deepspeed\]"):
        run_sft(cfg)
    monkeypatch.delitem(sys.modules, "deepspeed")
    if HAS_DEEPSPEED and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="DeepSpeed without a GPU needs 2 or more processes"):
            run_sft(cfg)
    assert not (tmp_path / "out").exists()


def test_a_partitioned_embedding_is_not_resized_from_its_empty_shape(policy_dir):
    """A ZeRO-3 partitioned weight is empty, its real shape in `ds_shape`: the pad-token check reads that shape
    and leaves a vocabulary larger than the tokenizer's as it is (read as 0 rows, it was once shrunk to the
    tokenizer's size)."""
    from transformers import AutoModelForCausalLM

    from prefloop.models import load_tokenizer
    from prefloop.models.loading import _sync_special_tokens

    model, tok = AutoModelForCausalLM.from_pretrained(policy_dir), load_tokenizer(str(policy_dir))
    emb = model.get_input_embeddings()
    emb.weight = torch.nn.Parameter(torch.empty(0))
    emb.weight.ds_shape = torch.Size([len(tok) + 64, emb.embedding_dim])
    resized = []
    model.resize_token_embeddings = lambda n, *a, **k: resized.append(n)
    _sync_special_tokens(model, tok)
    assert resized == [] and model.config.pad_token_id == tok.pad_token_id
