"""--resume refuses to mix runs: a checkpoint records what its run computes, and a resume that would compute
something else is refused with the differing options, before any model is loaded. The checkpoint swap
survives a kill between its two renames, and loading a checkpoint cannot run code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefloop.cli import main
from prefloop.recipes.context import RunContext, resume_differences, run_record
from prefloop.recipes.sft import SFTConfig
from prefloop.runtime.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def finished(tmp_path_factory, policy_dir, toy_data) -> tuple[Path, list[str]]:
    """An SFT run of 4 steps that kept its step-2 checkpoint (checkpoints are written before the last step)."""
    out = tmp_path_factory.mktemp("run") / "sft"
    args = ["sft", "--model", str(policy_dir), "--data", str(toy_data["demos"]), "--max-steps", "4",
            "--batch-size", "4", "--max-length", "48", "--lr", "1e-3", "--save-every", "2", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "checkpoint" / "complete.json").read_text())["step"] == 2
    return out, args


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change,named", [
    (["--lr", "2e-3"], "--lr 0.001 -> 0.002"),
    (["--seed", "7"], "--seed 0 -> 7"),
    (["--batch-size", "8"], "--batch-size 4 -> 8"),
    (["--max-length", "64"], "--max-length 48 -> 64"),
    (["--schedule", "cosine"], "--schedule linear -> cosine"),
    (["--max-steps", "3"], "--max-steps 4 -> 3 (it may only grow)"),
    (["--data", "OTHER"], "--data"),
    (["--model", "OTHER_MODEL"], "--model"),
])
def test_resume_with_a_change_is_refused_and_writes_nothing(change, named, finished, tmp_path, toy_data, capsys):
    out, args = finished
    if change[-1] == "OTHER":  # same options, other contents: only the hash tells
        other = tmp_path / "demos.jsonl"
        other.write_text("".join(toy_data["demos"].read_text().splitlines(True)[::-1]))
        change = ["--data", str(other)]
    if change[-1] == "OTHER_MODEL":
        other_model = tmp_path / "m"
        shutil.copytree(Path(args[args.index("--model") + 1]), other_model)
        change = ["--model", str(other_model)]
    before = snapshot(out)
    capsys.readouterr()
    assert main(args + ["--resume"] + change) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: --resume:") and named in err[0], err
    assert snapshot(out) == before


def test_allowed_changes_resume(finished, tmp_path):
    out, args = finished
    run = tmp_path / "sft"
    shutil.copytree(out, run)
    args = args[:args.index("--out")] + ["--out", str(run)]
    assert main(args + ["--resume", "--max-steps", "6", "--log-every", "2", "--save-every", "3"]) == 0
    meta = json.loads((run / "prefloop.json").read_text())
    assert meta["config"]["max_steps"] == 6 and meta["metrics"]["steps"] == 6
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4, 6]  # kept up to the checkpoint's step 2, then every 2nd step (and step 1)


def test_world_size_and_data_hash_are_compared(tmp_path, toy_data):
    cfg = SFTConfig(model="m", data=toy_data["demos"], out=tmp_path)
    saved = run_record(cfg, world=1)
    assert resume_differences(saved, run_record(cfg, world=1)) == []
    assert resume_differences(saved, run_record(cfg, world=2)) == ["processes 1 -> 2"]
    assert resume_differences(saved, run_record(SFTConfig(model="m", data=toy_data["demos"], out=tmp_path,
                                                          log_every=5, save_every=9), world=1)) == []


def test_kill_between_the_renames_resumes_from_the_newest_checkpoint(finished, tmp_path, monkeypatch):
    """State after `checkpoint -> checkpoint.old` and before `checkpoint.tmp -> checkpoint`: the finished
    .tmp is the newest complete checkpoint; the resumed run recomputes steps 3-4 exactly."""
    out, args = finished
    run = tmp_path / "sft"
    shutil.copytree(out, run)
    (run / "checkpoint").rename(run / "checkpoint.tmp")
    shutil.copytree(run / "checkpoint.tmp", run / "checkpoint.old")
    state = torch.load(run / "checkpoint.old" / "state.pt", weights_only=True)
    torch.save({**state, "step": 1}, run / "checkpoint.old" / "state.pt")  # the older checkpoint
    args = args[:args.index("--out")] + ["--out", str(run)]
    starts, start = [], RunContext.start
    monkeypatch.setattr(RunContext, "start", lambda self, *a: starts.append(start(self, *a)) or starts[-1])
    assert main(args + ["--resume"]) == 0
    assert starts == [2]
    a, b = load_file(str(out / "model" / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


class OneProcess:
    is_main_process, process_index, num_processes = True, 0, 1

    def wait_for_everyone(self):
        pass


def test_swap_recovery_picks_the_complete_checkpoint(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path, OneProcess())
    ck.save(1, {"head": torch.nn.Linear(2, 1)}, None, {"x": torch.ones(2)})
    real_rename = Path.rename
    calls = []

    def rename_then_die(self, target):
        calls.append(self)
        if len(calls) == 2:  # the second rename of the swap: .tmp -> checkpoint
            raise KeyboardInterrupt("killed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        ck.save(2, {"head": torch.nn.Linear(2, 1)}, None, {"x": torch.ones(2)})
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not (tmp_path / "checkpoint").exists()
    fresh = Checkpointer(tmp_path, OneProcess())
    assert fresh.exists() and fresh.load_state()["step"] == 2
    # a .tmp without its completion mark is a half-written save: the previous checkpoint wins
    shutil.rmtree(tmp_path / "checkpoint.old", ignore_errors=True)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    shutil.copytree(tmp_path / "checkpoint.old", tmp_path / "checkpoint.tmp")
    (tmp_path / "checkpoint.tmp" / "complete.json").unlink()
    torch.save({"step": 3}, tmp_path / "checkpoint.tmp" / "state.pt")
    assert Checkpointer(tmp_path, OneProcess()).load_state()["step"] == 2


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "PWNED_BY_CHECKPOINT",))


def test_checkpoint_state_cannot_run_code(tmp_path):
    ck = Checkpointer(tmp_path, OneProcess())
    ck.save(1, {}, None, {"x": torch.ones(1)})
    marker = Path(__file__).parent / "PWNED_BY_CHECKPOINT"
    torch.save({"step": 1, "payload": Exploit()}, tmp_path / "checkpoint" / "state.pt")
    try:
        with pytest.raises(Exception, match="[Ww]eights only"):
            ck.load_state()
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)


# -- the guard runs before any model loads, in every recipe; the Python API checks --out as the CLI does --------

SCORE_FN = "def length(prompts, responses):\n    return [float(len(r)) for r in responses]\n"


@pytest.fixture
def score_fn(tmp_path, monkeypatch) -> str:
    (tmp_path / "prefloop_guard_score.py").write_text(SCORE_FN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "prefloop_guard_score:length"


def _no_model_may_load(monkeypatch, module) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the resume guard ran")

    for name in ("load_tokenizer", "load_causal_lm", "load_reward_source"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, refuse)


def test_grpo_refused_resume_loads_no_model(tmp_path, policy_dir, toy_data, score_fn, monkeypatch, capsys):
    from prefloop.recipes import grpo

    out = tmp_path / "grpo"
    args = ["grpo", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--reward-fn", score_fn,
            "--rollout-batch-size", "4", "--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "4",
            "--max-length", "48", "--max-steps", "2", "--save-every", "1", "--out", str(out)]
    assert main(args) == 0
    _no_model_may_load(monkeypatch, grpo)
    before = snapshot(out)
    capsys.readouterr()
    assert main(args + ["--resume", "--lr", "3e-4"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: --resume:") and "--lr" in err[0], err
    assert snapshot(out) == before


def test_rejection_sampling_refused_resume_loads_no_model(tmp_path, policy_dir, toy_data, score_fn, monkeypatch,
                                                          capsys):
    from prefloop.recipes import rejection_sampling as rs

    out = tmp_path / "rs"
    args = ["rejection-sampling", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]),
            "--reward-fn", score_fn, "--rounds", "1", "--prompts-per-round", "4", "--num-samples", "2",
            "--max-new-tokens", "4", "--max-steps", "1", "--batch-size", "2", "--max-length", "48", "--out", str(out)]
    assert main(args) == 0
    _no_model_may_load(monkeypatch, rs)
    before = snapshot(out)
    capsys.readouterr()
    assert main(args + ["--resume", "--num-samples", "3"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--num-samples 2 -> 3" in err[0] and err[0].startswith("error: --resume:"), err
    assert snapshot(out) == before
    # the same options with more rounds pass the guard (and go on to load the policy)
    with pytest.raises(AssertionError, match="loaded before the resume guard"):
        main(args[:args.index("--rounds")] + ["--rounds", "2"] + args[args.index("--rounds") + 2:] + ["--resume"])


def test_python_api_refuses_another_runs_out_like_the_cli(finished, toy_data, monkeypatch):
    from prefloop.errors import ConfigError
    from prefloop.recipes import sft

    out, args = finished
    _no_model_may_load(monkeypatch, sft)
    before = snapshot(out)
    cfg = dict(model=args[args.index("--model") + 1], data=toy_data["demos"], out=out, max_steps=1)
    with pytest.raises(ConfigError, match=f"--out {out} holds another run .*pass --overwrite"):
        sft.run_sft(SFTConfig(**cfg))
    assert snapshot(out) == before
    # --overwrite (or --resume) gets past the check to the loading of the model
    with pytest.raises(AssertionError, match="was loaded"):
        sft.run_sft(SFTConfig(overwrite=True, **cfg))
