"""The command line: --help, --config, and bad input -> one line naming what and where, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefloop.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefloop.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("world", "pretrain", "sft", "reward", "ppo", "sample", "demo"):
        assert cmd in text


@pytest.mark.parametrize("command,flags", [
    ("sft", ["--model", "--data", "--out", "--seed", "--max-steps", "--batch-size", "--max-length", "--lr",
             "--config", "--resume", "--save-every"]),
    ("reward", ["--model", "--data", "--eval-data", "--use-margin", "--batch-size", "--data-kind", "--ranking-loss",
                "--rating-loss", "--ensemble-size"]),
    ("ppo", ["--policy", "--reward", "--prompts", "--max-new-tokens", "--rollout-batch-size", "--kl-coef",
             "--kl-target", "--critic", "--temperature", "--no-eos-penalty", "--truncate-token", "--ensemble-mode"]),
    ("pretrain", ["--data", "--vocab-size", "--size", "--arch"]),
    ("sample", ["--model", "--prompts", "--num-samples", "--best-of", "--reward", "--reward-fn"]),
    ("dpo", ["--model", "--data", "--loss", "--beta", "--label-smoothing", "--reference", "--precompute-reference"]),
    ("grpo", ["--policy", "--reward", "--reward-fn", "--num-generations", "--kl-coef", "--kl-in-reward"]),
    ("rloo", ["--policy", "--reward", "--reward-fn", "--num-generations", "--kl-coef"]),
    ("rejection-sampling", ["--policy", "--reward", "--rounds", "--num-samples"]),
    ("loop", ["--world", "--policy", "--rounds", "--comparisons", "--feedback", "--method", "--simulate"]),
    ("convert", ["--format", "--input", "--out", "--margin"]),
    ("demo", ["--preset", "--out"]),
    ("world", ["--out", "--preset"]),
])
def test_command_help_documents_options(command, flags, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in flags:
        assert f in text, f


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_bad_data_names_file_and_line(tmp_path, policy_dir):
    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 3}\n')
    line = one_error_line(run_cli("sft", "--model", str(policy_dir), "--data", str(bad), "--out", str(tmp_path / "o")))
    assert "demos.jsonl:2" in line and "completion" in line
    assert not (tmp_path / "o" / "model").exists()


def test_malformed_json_and_missing_field(tmp_path, policy_dir):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"\n')
    line = one_error_line(run_cli("reward", "--model", str(policy_dir), "--data", str(bad), "--out", str(tmp_path)))
    assert "pairs.jsonl:2" in line
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    line = one_error_line(run_cli("reward", "--model", str(policy_dir), "--data", str(bad), "--out", str(tmp_path)))
    assert "pairs.jsonl:1" in line and "rejected" in line


def test_unknown_model_path_and_missing_option(tmp_path, toy_data):
    line = one_error_line(run_cli("sft", "--model", str(tmp_path / "nope"), "--data", str(toy_data["demos"]),
                                  "--out", str(tmp_path / "o")))
    assert "nope" in line and "does not exist" in line
    line = one_error_line(run_cli("sft", "--data", str(toy_data["demos"]), "--out", str(tmp_path / "o")))
    assert "--model" in line
    assert not (tmp_path / "o" / "model").exists()


def test_wrong_type_on_command_line_exits_2(tmp_path):
    res = run_cli("sft", "--max-steps", "many")
    assert res.returncode == 2 and "max-steps" in res.stderr


def test_config_file_supplies_options_and_cli_overrides(tmp_path, policy_dir, toy_data):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {policy_dir}\ndata: {toy_data['demos']}\nmax_steps: 50\nbatch_size: 8\n"
                   f"max_length: 64\nout: {tmp_path / 'run'}\n")
    res = run_cli("sft", "--config", str(cfg), "--max-steps", "2")
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "run" / "prefloop.json").read_text())
    assert meta["config"]["max_steps"] == 2 and meta["config"]["batch_size"] == 8
    cfg.write_text("modle: x\n")
    line = one_error_line(run_cli("sft", "--config", str(cfg)))
    assert "sft.yaml" in line and "unknown option 'modle'" in line


def _exit_code(fn, *args) -> int:
    try:
        return fn(*args)
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code


@pytest.mark.parametrize("group,sub", [("annotate", "serve"), ("eval", "reward")])
def test_command_groups_dispatch_to_their_subcommands(group, sub, capsys):
    from prefloop.cli import main

    assert main([]) == 0
    assert group in capsys.readouterr().out
    assert _exit_code(main, [group, "--help"]) == 0
    assert sub in capsys.readouterr().out
    assert _exit_code(main, [group, "no-such-subcommand"]) == 2
    assert "no-such-subcommand" in capsys.readouterr().err
