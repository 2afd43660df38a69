"""benchmarks/memory_plan.py: the memory planner against the measured peak memory of real runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "memory_plan.py"


def test_unknown_run_is_refused_before_anything_is_written(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--only", "sft,nope"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: --only: unknown run 'nope' (runs: sft, sft-ckpt, sft-lora, dpo, dpo-lora, grpo, ppo, ppo-lora-ckpt)"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sft_peak_memory_is_within_a_fifth_of_the_plan(tmp_path):
    # ~2 minutes on 2 cores: a 16M-parameter model trains 2 steps, with and without gradient checkpointing
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", "sft,sft-ckpt"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = {r["name"]: r for r in json.loads((tmp_path / "memory_plan.json").read_text())["runs"]}
    for r in runs.values():
        assert r["measured_bytes"] > 100 * 2**20  # the training state of 16M fp32 parameters alone is ~240 MiB
        assert 0.8 <= r["ratio"] <= 1.2, r  # 0.93 and 1.04 measured (benchmarks/README.md)
    # the term the switch changes moves the measured peak the same way
    assert runs["sft-ckpt"]["measured_bytes"] < runs["sft"]["measured_bytes"]
    assert runs["sft-ckpt"]["predicted_bytes"] < runs["sft"]["predicted_bytes"]
