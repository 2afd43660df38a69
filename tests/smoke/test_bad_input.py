"""The error contract of every trainer command, table-driven: each bad option, bad record or broken model
ends with exit code 2, exactly one `error:` line naming what and where, no traceback, and nothing written
in the output directory. Option cases fail before any model is loaded, so they run in-process and fast;
a few go through the installed CLI to check the real exit code and stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefloop.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
COMMANDS = ["sft", "reward", "dpo", "ppo", "grpo", "rloo", "pretrain", "sample", "rejection-sampling"]
Q = "User: What is 1 plus 2?\nAssistant:"
SCORE_FN = "def length(prompts, responses):\n    return [float(len(r)) for r in responses]\n"


def q(i: int) -> str:
    return f"User: What is {i} plus 2?\nAssistant:"


@pytest.fixture(scope="module")
def files(tmp_path_factory, policy_dir) -> dict[str, Path]:
    """Good inputs for every command, and broken copies of the policy."""
    d = tmp_path_factory.mktemp("inputs")
    good = {
        "demos": [{"prompt": q(i), "completion": f" It is {i}."} for i in range(8)],
        "pairs": [{"prompt": q(i), "chosen": f" It is {i}.", "rejected": f" No {i}."} for i in range(8)],
        "prompts": [{"prompt": q(i)} for i in range(8)],
        "corpus": [{"text": q(i) + f" It is {i}."} for i in range(8)],
    }
    (d / "prefloop_bad_input_score.py").write_text(SCORE_FN)
    out = {k: _write(d / f"{k}.jsonl", rows) for k, rows in good.items()}
    trunc = d / "truncated"
    shutil.copytree(policy_dir, trunc)
    (trunc / "model.safetensors").write_bytes((trunc / "model.safetensors").read_bytes()[:1000])
    badcfg = d / "badconfig"
    shutil.copytree(policy_dir, badcfg)
    cfg = json.loads((badcfg / "config.json").read_text())
    (badcfg / "config.json").write_text(json.dumps({**cfg, "hidden_size": "big"}))
    return {**out, "policy": policy_dir, "truncated": trunc, "badconfig": badcfg, "dir": d}


@pytest.fixture(autouse=True)
def _score_module(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files["dir"]))


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# command -> (data option, kind of data file, model option)
INPUTS = {
    "sft": ("--data", "demos", "--model"), "reward": ("--data", "pairs", "--model"),
    "dpo": ("--data", "pairs", "--model"), "ppo": ("--prompts", "prompts", "--policy"),
    "grpo": ("--prompts", "prompts", "--policy"), "rloo": ("--prompts", "prompts", "--policy"),
    "pretrain": ("--data", "corpus", None), "sample": ("--prompts", "prompts", "--model"),
    "rejection-sampling": ("--prompts", "prompts", "--policy"),
}


def base_args(command: str, files: dict, data: Path | None = None, model: Path | None = None) -> list[str]:
    data_opt, kind, model_opt = INPUTS[command]
    args = [command, data_opt, str(data or files[kind]), "--max-length", "64"]
    if model_opt:
        args += [model_opt, str(model or files["policy"])]
    if command == "ppo":
        args += ["--reward", str(files["policy"]), "--rollout-batch-size", "4", "--max-steps", "1"]
    if command in ("grpo", "rloo"):
        args += ["--reward-fn", "prefloop_bad_input_score:length", "--rollout-batch-size", "4"]
    if command == "rejection-sampling":
        args += ["--reward-fn", "prefloop_bad_input_score:length", "--rounds", "1"]
    if command != "sample":
        args += ["--max-steps", "1"]
    return args


def run_in_process(args: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def assert_refused(rc: int, lines: list[str], *needles: str, progress_before: bool = False) -> str:
    """Exit code 2 and one `error:` line, the only line on stderr (`progress_before`: after the progress
    lines of work done before the failure)."""
    assert rc == 2, lines
    assert "Traceback" not in "\n".join(lines)
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], lines
    if not progress_before:
        assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def empty_or_absent(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def out_arg(command: str, out: Path) -> list[str]:
    return ["--out", str(out / "samples.jsonl" if command == "sample" else out)]


# (case, extra options, text the message must contain, commands it does not apply to)
OPTION_CASES = [
    ("batch_size_0", ["--batch-size", "0"], "--batch-size must be >= 1, got 0", ()),
    ("batch_size_negative", ["--batch-size", "-3"], "--batch-size must be >= 1, got -3", ()),
    ("max_length_1", ["--max-length", "1"], "--max-length must be >= 2, got 1", ()),
    ("max_length_0", ["--max-length", "0"], "--max-length must be >= 2, got 0", ()),
    ("lr_nan", ["--lr", "nan"], "--lr must be > 0, got nan", ("sample",)),
    ("lr_inf", ["--lr", "inf"], "--lr must be > 0, got inf", ("sample",)),
    ("max_steps_negative", ["--max-steps", "-1"], "--max-steps must be >= 1, got -1", ("sample",)),
    ("micro_batch_size_0", ["--micro-batch-size", "0"], "--micro-batch-size must be >= 1, got 0", ("sample",)),
    ("save_every_negative", ["--save-every", "-1"], "--save-every must be >= 0, got -1", ("sample",)),
    ("temperature_0", ["--temperature", "0"], "--temperature must be > 0, got 0", ("sft", "reward", "dpo", "pretrain")),
    ("warmup_ratio_1", ["--warmup-ratio", "1"], "--warmup-ratio must be in [0, 1), got 1", ("sample",)),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,extra,message,skip", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_is_refused_before_anything(command, case, extra, message, skip, files, tmp_path, capsys):
    if command in skip:
        pytest.skip(f"{command} has no such option")
    out = tmp_path / "out"
    rc, lines = run_in_process(base_args(command, files) + out_arg(command, out) + extra, capsys)
    assert_refused(rc, lines, message)
    assert empty_or_absent(out)


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_output_directory(command, files, tmp_path, capsys):
    args = base_args(command, files)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    if command == "sample":  # sample writes one file: a directory there is the mistake
        rc, lines = run_in_process(args + ["--out", str(tmp_path)], capsys)
        assert_refused(rc, lines, "is a directory")
    else:
        rc, lines = run_in_process(args + ["--out", str(taken)], capsys)
        assert_refused(rc, lines, str(taken), "is a file")
    assert taken.read_text() == "keep me"
    # a path below a file, and a place nobody can write (as root too: /proc takes no new files)
    rc, lines = run_in_process(args + ["--out", str(taken / "sub" / "o")], capsys)
    assert_refused(rc, lines, "taken.txt is a file")
    rc, lines = run_in_process(args + ["--out", "/proc/prefloop-test/o"], capsys)
    assert_refused(rc, lines, "cannot write in /proc")
    assert not Path("/proc/prefloop-test").exists()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "sample"])
def test_another_runs_directory_needs_overwrite_or_resume(command, files, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "prefloop.json").write_text('{"recipe": "earlier"}')
    rc, lines = run_in_process(base_args(command, files) + ["--out", str(out)], capsys)
    assert_refused(rc, lines, "holds another run", "--overwrite")
    assert (out / "prefloop.json").read_text() == '{"recipe": "earlier"}' and not any((out / "model").iterdir())


@pytest.mark.parametrize("command", COMMANDS)
def test_config_file_value_of_the_wrong_type(command, files, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("batch_size: eight\n")
    out = tmp_path / "out"
    rc, lines = run_in_process(base_args(command, files) + out_arg(command, out) + ["--config", str(cfg)], capsys)
    assert_refused(rc, lines, "bad.yaml", "batch_size", "int", "'eight'")
    assert empty_or_absent(out)


# Data that cannot be trained on: (case, line 2 of the file per kind of data, message); line 1 is good.
DATA_CASES = {
    "lone_surrogate": {"demos": '{"prompt": "q", "completion": " a\\ud800"}',
                       "pairs": '{"prompt": "q", "chosen": " a\\udc00", "rejected": " b"}',
                       "prompts": '{"prompt": "q\\ud83d"}', "corpus": '{"text": "x\\ud800"}'},
    "duplicate_key": {"demos": '{"prompt": "q", "completion": " a", "completion": " b"}',
                      "pairs": '{"prompt": "q", "chosen": " a", "rejected": " b", "rejected": " a"}',
                      "prompts": '{"prompt": "q", "prompt": "r"}', "corpus": '{"text": "a", "text": "b"}'},
    "nul": {"demos": '{"prompt": "q", "completion": " a\\u0000"}',
            "pairs": '{"prompt": "q", "chosen": " a", "rejected": " a\\u0000"}',
            "prompts": '{"prompt": "q\\u0000"}', "corpus": '{"text": "x\\u0000y"}'},
}
DATA_MESSAGES = {"lone_surrogate": "lone surrogate", "duplicate_key": "appears twice", "nul": "NUL character"}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_record_is_refused_with_its_line(command, case, files, tmp_path, capsys):
    _, kind, _ = INPUTS[command]
    first = json.loads(files[kind].read_text().splitlines()[0])
    data = _write(tmp_path / f"bad.{kind}.jsonl", [first, DATA_CASES[case][kind], first])
    out = tmp_path / "out"
    rc, lines = run_in_process(base_args(command, files, data=data) + out_arg(command, out), capsys)
    assert_refused(rc, lines, f"{data}:2:", DATA_MESSAGES[case])
    assert empty_or_absent(out)


@pytest.mark.parametrize("command", ["reward", "dpo"])
def test_comparison_of_a_response_with_itself(command, files, tmp_path, capsys):
    data = _write(tmp_path / "pairs.jsonl", [{"prompt": Q, "chosen": " a", "rejected": " b"},
                                             {"prompt": Q, "chosen": " same", "rejected": " same"}])
    out = tmp_path / "out"
    rc, lines = run_in_process(base_args(command, files, data=data) + ["--out", str(out)], capsys)
    assert_refused(rc, lines, f"{data}:2:", "identical")
    assert empty_or_absent(out)


@pytest.mark.parametrize("command", [c for c, (_, _, m) in INPUTS.items() if m])
@pytest.mark.parametrize("broken,message", [("truncated", "model.safetensors: corrupt or truncated"),
                                            ("badconfig", "config.json: cannot load")])
def test_broken_model_names_the_file(command, broken, message, files, tmp_path, capsys):
    out = tmp_path / "out"
    rc, lines = run_in_process(base_args(command, files, model=files[broken]) + out_arg(command, out), capsys)
    # rejection sampling announces its round before it loads the policy
    line = assert_refused(rc, lines, message, progress_before=command == "rejection-sampling")
    assert str(files[broken]) in line
    assert empty_or_absent(out)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefloop.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


@pytest.mark.parametrize("command,extra,message", [
    ("ppo", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),  # was a ZeroDivisionError
    ("sft", ["--lr", "nan"], "--lr must be > 0, got nan"),
])
def test_installed_cli_exit_code_and_stderr(command, extra, message, files, tmp_path):
    out = tmp_path / "out"
    res = cli(*base_args(command, files), "--out", str(out), *extra)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {message}"], res.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["reward", "dpo"])
def test_an_empty_reply_is_a_valid_response(command, files, tmp_path, capsys):
    """HH-RLHF's harmless-base test set prefers " " (silence) to some replies: it trains as EOS only."""
    rows = [{"prompt": q(i), "chosen": [" ", "", " It is 3."][i % 3], "rejected": f" No {i}."} for i in range(8)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    rc, lines = run_in_process(base_args(command, files, data=data) + ["--out", str(tmp_path / "o")], capsys)
    assert rc == 0, lines
    assert json.loads((tmp_path / "o" / "prefloop.json").read_text())["metrics"]["steps"] == 1


def test_skip_invalid_trains_on_the_rest_and_reports(files, tmp_path, capsys):
    good = files["demos"].read_text().splitlines()
    bad = ['{"prompt": "q", "completion": ""}', '{"prompt": "q", "completion": " a\\ud800"}', "{not json"]
    data = _write(tmp_path / "demos.jsonl", good[:3] + bad + good[3:])
    args = base_args("sft", files, data=data) + ["--out", str(tmp_path / "o")]
    rc, lines = run_in_process(args, capsys)
    assert_refused(rc, lines, f"{data}:4:", "'completion' is empty")
    rc, lines = run_in_process(args + ["--skip-invalid"], capsys)
    assert rc == 0, lines
    warning = [ln for ln in lines if ln.startswith("warning:")]
    assert warning == [f"warning: {data}: skipped 3 invalid record(s) (lines 4, 5, 6); line 4: field 'completion' "
                       "is empty"]
    assert json.loads((tmp_path / "o" / "prefloop.json").read_text())["metrics"]["examples"] == len(good)
