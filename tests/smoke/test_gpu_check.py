"""The GPU check script (benchmarks/gpu/gpu_check.py) in its CPU dry run, so it cannot rot between the rare
sessions that have a GPU: it must set up its model and data, run each recipe through the benchmark worker,
time the steps and write its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "gpu_check.py"


def _dry_run(out: Path, only: str, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--only", only, *extra],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


def _check_runs(record: dict, tasks: list[str]) -> None:
    runs = {r["task"]: r for r in record["runs"] if r["label"] == "prefloop"}
    assert sorted(runs) == sorted(tasks)
    for task, run in runs.items():
        res = run["result"]
        assert res["ok"], (task, res.get("error"))
        steps = len(res["step_times"])
        assert steps == 2 and all(t > 0 for t in res["step_times"]), task  # DRY_STEPS: every step timed
        assert all(n > 0 for n in res["tokens"]) and all(f > 0 for f in res["flops"]), task


def test_gpu_check_dry_run_trains_and_reports(tmp_path):
    record = _dry_run(tmp_path, "sft,grpo")
    _check_runs(record, ["sft", "grpo"])
    setup = record["setup"]
    # the Qwen2-shaped model really was built and trained, with the matmul-weight count used for MFU
    cfg = json.loads((tmp_path / "setup-tiny" / "lm" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert 0 < setup["matmul_params_lm"] < setup["params_lm_total"] + cfg["vocab_size"] * cfg["hidden_size"]
    assert record["sampler"] and record["sampler"][0]["prefloop_tokens_per_s"] > 0
    report = (tmp_path / "gpu_check.md").read_text()
    assert "| sft | prefloop | yes |" in report and "| grpo | prefloop | yes |" in report
    # the memory planner's prediction beside each prefloop run's peak (the GPU run checks the model with it)
    from prefloop.plan import Setup, load_shape, plan

    assert "| peak GPU GiB | plan GiB | peak / plan |" in report
    runs = {r["task"]: r for r in record["runs"] if r["label"] == "prefloop"}
    expected = plan(load_shape(str(tmp_path / "setup-tiny" / "lm")),
                    Setup(recipe="sft", precision="fp32", batch_size=record["batch"], max_length=record["max_length"]))
    assert runs["sft"]["planned_bytes"] == expected.peak
    assert runs["grpo"]["planned_bytes"] > 0
    for task, run in runs.items():
        row = next(ln for ln in report.splitlines() if ln.startswith(f"| {task} | prefloop | yes |"))
        assert f"| {run['planned_bytes'] / 2**30:.3g} |" in row, row


@pytest.mark.slow
def test_gpu_check_dry_run_every_task(tmp_path):
    _check_runs(_dry_run(tmp_path, "sft,dpo,grpo,ppo", "--no-sampler"), ["sft", "dpo", "grpo", "ppo"])


def test_gpu_check_refuses_without_gpu_unless_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would run for real")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
