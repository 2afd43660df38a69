"""--report-to through a trainer's run: the metrics a run logs reach TensorBoard as they reach metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from prefloop.cli import run_command
from prefloop.recipes.sft import SFTConfig, run_sft


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_trainer_run_reports_to_tensorboard(tmp_path, policy_dir, toy_data):
    """Through the command line and the trainer's run context, as a user runs it."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "sft"
    args = ["--model", str(policy_dir), "--data", str(toy_data["demos"]), "--out", str(out), "--max-steps", "2",
            "--batch-size", "4", "--max-length", "32", "--report-to", "tensorboard"]
    assert run_command(SFTConfig, run_sft, args, "prefloop sft", "") == 0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    got = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in got["loss/sft"]] == [r["step"] for r in rows if "loss/sft" in r] == [1, 2]
    assert [v for _, v in got["loss/sft"]] == pytest.approx([r["loss/sft"] for r in rows])
