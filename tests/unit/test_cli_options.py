"""The command line's options: help on every option of every command (prefloop, prefloop eval, prefloop annotate),
required options shown as required, shared option groups, and TRL's option names mapped exactly."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import typing

import pytest

from prefloop.cli import COMMANDS, _fields_from_source, help_text, main, run_command
from prefloop.eval.cli import SUBCOMMANDS as EVAL_SUBCOMMANDS
from prefloop.feedback.cli import _parser as annotate_parser
from prefloop.recipes import options


def _config_classes():
    for name, (module, cls, _, _) in COMMANDS.items():
        yield f"prefloop {name}", getattr(importlib.import_module(module), cls)
    for name, (cls, _, _) in EVAL_SUBCOMMANDS.items():
        yield f"prefloop eval {name}", cls


def test_every_option_of_prefloop_and_prefloop_eval_has_help():
    """--help of these commands prints each field's docstring (read from the source, so help needs no torch):
    every field of every config class must be there, with a non-empty text."""
    undocumented, commands = [], 0
    for prog, cls in _config_classes():
        commands += 1
        docs = _fields_from_source(cls.__module__, cls.__name__)
        fields = [f.name for f in dataclasses.fields(cls)]
        assert sorted(docs) == sorted(fields), prog  # help lists exactly the options the parser takes
        undocumented += [f"{prog} {options.flag(n)}" for n in fields if not docs[n][2].strip()]
    assert commands == len(COMMANDS) + len(EVAL_SUBCOMMANDS) >= 20
    assert undocumented == []


def test_every_option_of_prefloop_annotate_has_help():
    parser = annotate_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undocumented, seen = [], 0
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            seen += 1
            if not (action.help or "").strip():
                undocumented.append(f"annotate {name} {'/'.join(action.option_strings) or action.dest}")
    assert len(sub.choices) >= 18 and seen > 60
    assert undocumented == []


def test_required_options_show_as_required(capsys):
    text = help_text("prefloop.recipes.ppo", "PPOConfig", "prefloop ppo", "")
    for opt in ("--policy STR ", "--prompts PATH ", "--reward STR "):
        line_and_rest = text.split("  " + opt, 1)[1]
        assert "(required)" in line_and_rest.split("\n  --", 1)[0], opt
    assert "{None}" not in text and "--reference STR|None" in text  # an optional one keeps its None
    with pytest.raises(SystemExit):
        main(["eval", "policy", "--help"])
    out = capsys.readouterr().out
    assert "--model STR" in out and "(required)" in out.split("--model STR", 1)[1].split("\n  --", 1)[0]


def options_cls(command: str):
    module, cls, _, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), cls)


def test_shared_groups_are_declared_once():
    from prefloop.models.ensemble import EnsembleMode
    from prefloop.recipes.ppo import PPOConfig
    from prefloop.recipes.rejection_sampling import RejectionSamplingConfig
    from prefloop.recipes.sample import SampleConfig

    assert typing.get_args(options.EnsembleMode) == typing.get_args(EnsembleMode)
    for cls in (PPOConfig, RejectionSamplingConfig, SampleConfig, EVAL_SUBCOMMANDS["policy"][0]):
        assert issubclass(cls, options.SamplingOptions) and issubclass(cls, options.ConfigFileOption)
    # per-command defaults: RL samples short and cool, sampling for people the model's own distribution
    assert (PPOConfig().temperature, SampleConfig().temperature) == (0.7, 1.0)


def parsed(command: str, *args: str):
    got = []
    code = run_command(options_cls(command), got.append, list(args), f"prefloop {command}", "")
    assert code == 0
    return got[0]


def _same_but_out(a, b) -> None:
    assert dataclasses.replace(a, out=None) == dataclasses.replace(b, out=None)


@pytest.mark.parametrize("command,trl,native", [
    ("sft", ["--learning-rate", "3e-5", "--num-train-epochs", "2"], ["--lr", "3e-5", "--epochs", "2"]),
    ("sft", ["--logging-steps=5", "--save-steps", "7", "--adam-epsilon", "1e-6"],
     ["--log-every", "5", "--save-every", "7", "--adam-eps", "1e-6"]),
    ("dpo", ["--beta", "0.3", "--learning-rate", "1e-6"], ["--beta", "0.3", "--lr", "1e-6"]),  # DPO's own beta
    ("grpo", ["--beta", "0.02", "--num-generations", "8", "--max-completion-length", "16", "--num-iterations", "2",
              "--epsilon", "0.3"],
     ["--kl-coef", "0.02", "--num-generations", "8", "--max-new-tokens", "16", "--epochs-per-rollout", "2",
      "--clip-eps", "0.3"]),
    ("rloo", ["--rloo-k", "3"], ["--num-generations", "3"]),
    ("ppo", ["--num-ppo-epochs", "2", "--cliprange", "0.1", "--cliprange-value", "0.3", "--response-length", "20"],
     ["--ppo-epochs", "2", "--clip-eps", "0.1", "--clip-eps-value", "0.3", "--max-new-tokens", "20"]),
    ("ppo", ["--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"],
     ["--micro-batch-size", "4", "--batch-size", "8"]),
    ("sft", ["--gradient-accumulation-steps", "4"], ["--micro-batch-size", "4"]),  # of the default --batch-size 16
    # of the batch --rollout-batch-size makes (8), not of --batch-size's default 64
    ("ppo", ["--rollout-batch-size", "8", "--gradient-accumulation-steps", "2"],
     ["--rollout-batch-size", "8", "--micro-batch-size", "4"]),
    ("ppo", ["--max-prompt-length", "100", "--max-new-tokens", "28"],
     ["--max-length", "128", "--max-new-tokens", "28"]),
])
def test_trl_option_names_give_the_same_config_as_prefloop_names(command, trl, native, tmp_path):
    out = ["--out", str(tmp_path / "o")]
    a, b = parsed(command, *trl, *out), parsed(command, *native, *out)
    _same_but_out(a, b)
    assert a != type(a)(out=a.out)  # the options did change something


def test_trl_batch_options_count_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = parsed("sft", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "3",
                 "--out", str(tmp_path / "o"))
    assert (cfg.batch_size, cfg.micro_batch_size) == (24, 4)


@pytest.mark.parametrize("args,message", [
    (["sft", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2", "--batch-size", "16"],
     "--per-device-train-batch-size 4 x --gradient-accumulation-steps 2 x 1 processes = 8, but --batch-size is 16"),
    (["sft", "--gradient-accumulation-steps", "3"], "--batch-size 16 is not a multiple of 3 x 1 processes"),
    (["dpo", "--max-prompt-length", "64"], "prefloop dpo cuts prompts from the left to fit --max-length"),
    (["ppo", "--max-prompt-length", "64", "--max-length", "80"], "--max-prompt-length and --max-length: give one"),
    (["sft", "--per-device-train-batch-size", "two"], "--per-device-train-batch-size needs an integer, got 'two'"),
])
def test_trl_options_that_cannot_be_mapped_are_refused_in_one_line(args, message, tmp_path, capsys):
    code = run_command(options_cls(args[0]), lambda c: None, [*args[1:], "--out", str(tmp_path / "o")],
                       f"prefloop {args[0]}", "")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_trl_names_are_listed_in_a_trainers_help(capsys):
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    out = capsys.readouterr().out
    assert "--learning-rate (= --lr)" in out and "--beta (= --kl-coef)" in out
    with pytest.raises(SystemExit):
        main(["dpo", "--help"])
    out = capsys.readouterr().out
    assert "--beta (= --kl-coef)" not in out and "--max-prompt-length" not in out
