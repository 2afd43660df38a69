"""Option checks that need no model: declared ranges for every numeric option, derived defaults, the
non-clobbering --out default, help without torch, and metrics.jsonl created only by a logged step."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from prefloop.cli import COMMANDS, run_command
from prefloop.recipes.options import RANGES

TRAINERS = ["sft", "reward", "dpo", "ppo", "grpo", "rloo", "pretrain", "sample", "rejection-sampling"]


def config_class(command: str):
    import importlib

    module, cls, _, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), cls)


@pytest.mark.parametrize("command", TRAINERS)
def test_every_numeric_option_has_a_declared_range(command):
    cls = config_class(command)
    hints = typing.get_type_hints(cls)
    numeric = [f.name for f in dataclasses.fields(cls)
               if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))]
    assert numeric and [n for n in numeric if n not in RANGES] == []


def parsed(command: str, *args: str):
    """The config `prefloop <command> ARGS` would run with (after every check)."""
    got = []
    assert run_command(config_class(command), got.append, list(args), f"prefloop {command}", "") == 0
    return got[0]


def test_defaults_follow_the_options_given(tmp_path):
    out = ["--out", str(tmp_path / "o")]
    assert parsed("ppo", "--rollout-batch-size", "8", *out).batch_size == 8
    assert parsed("ppo", "--rollout-batch-size", "96", *out).batch_size == 48  # largest divisor up to 64
    assert parsed("ppo", "--rollout-batch-size", "96", "--batch-size", "32", *out).batch_size == 32
    cfg = parsed("grpo", "--num-generations", "3", *out)
    assert (cfg.rollout_batch_size, cfg.batch_size) == (63, 63)
    # given explicitly, a bad combination is the user's to fix: left for the recipe to refuse
    assert parsed("ppo", "--rollout-batch-size", "8", "--batch-size", "3", *out).batch_size == 3


def test_out_default_never_clobbers_an_earlier_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(parsed("sft").out) == "runs/sft"
    (tmp_path / "runs" / "sft" / "model").mkdir(parents=True)
    assert str(parsed("sft").out) == "runs/sft-2"
    assert str(parsed("reward").out) == "runs/reward"
    assert str(parsed("sft", "--resume").out) == "runs/sft"  # --resume continues the newest
    (tmp_path / "runs" / "sft-2").mkdir()
    assert str(parsed("sft", "--resume").out) == "runs/sft-2"


def test_command_help_does_not_import_torch():
    code = ("import sys; from prefloop.cli import main\n"
            "for c in ('sft', 'ppo', 'grpo', 'sample', 'rejection-sampling', 'loop'):\n"
            "    try:\n"
            "        main([c, '--help'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--rollout-batch-size INT" in res.stdout and "--precision {auto,fp32,bf16,fp16}" in res.stdout


def test_metrics_file_appears_with_the_first_logged_step(tmp_path):
    from prefloop.runtime.metrics import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 9}\n')  # an earlier run's, replaced only once this run logs
    log = MetricsLogger(path)
    assert path.read_text() == '{"step": 9}\n'
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.5})
    assert [line.count('"step"') for line in path.read_text().splitlines()] == [1, 1]
    assert '"step": 9' not in path.read_text()
