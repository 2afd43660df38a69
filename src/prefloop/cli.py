"""`prefloop <command> [options]`: parses options into a recipe's config dataclass and dispatches.

Options come from the dataclass fields (their docstrings are the --help text). `--config FILE.yaml`
supplies values first; options on the command line override them. Bad input exits with code 2 and
one line on stderr naming what is wrong and where.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import typing
from pathlib import Path

# command: (module, config class, run function, one-line description). Modules load lazily so that
# `prefloop --help` stays fast.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "world": ("prefloop.recipes.world_cmd", "WorldCommand", "run_world_command",
              "write the synthetic assistant world (corpus, demonstrations, prompts, comparisons)"),
    "pretrain": ("prefloop.recipes.pretrain", "PretrainConfig", "run_pretrain",
                 "train a BPE tokenizer and a small causal LM from scratch on a text corpus"),
    "sft": ("prefloop.recipes.sft", "SFTConfig", "run_sft", "supervised fine-tuning on demonstrations"),
    "reward": ("prefloop.recipes.reward", "RewardConfig", "run_reward",
               "train a reward model on comparisons, K-way rankings or ratings; --ensemble-size N for an ensemble"),
    "ppo": ("prefloop.recipes.ppo", "PPOConfig", "run_ppo", "PPO against a reward model with a KL penalty"),
    "sample": ("prefloop.recipes.sample", "SampleConfig", "run_sample", "sample K completions per prompt to JSONL"),
    "demo": ("prefloop.recipes.demo", "DemoConfig", "run_demo",
             "the whole RLHF chain on the synthetic world, with an evaluation report"),
    "dpo": ("prefloop.recipes.dpo", "DPOConfig", "run_dpo",
            "direct preference optimisation (DPO, IPO, conservative DPO) on comparisons"),
    "grpo": ("prefloop.recipes.grpo", "GRPOConfig", "run_grpo",
             "critic-free policy gradient with a group-mean baseline over K samples per prompt"),
    "rloo": ("prefloop.recipes.grpo", "RLOOConfig", "run_rloo",
             "critic-free policy gradient with a leave-one-out baseline over K samples per prompt"),
    "rejection-sampling": ("prefloop.recipes.rejection_sampling", "RejectionSamplingConfig",
                           "run_rejection_sampling", "rounds of best-of-n sampling under a reward model, then SFT"),
    "loop": ("prefloop.recipes.loop", "LoopConfig", "run_loop",
             "iterated RLHF: rounds of sample -> feedback -> refit reward model -> RL -> evaluate"),
    "convert": ("prefloop.data.convert", "ConvertConfig", "run_convert",
                "convert public human-feedback data (HH-RLHF, summarize, SHP, VADER) to prefloop JSONL"),
    "report": ("prefloop.eval.report_cmd", "ReportConfig", "run_report",
               "HTML + Markdown report of a run directory (demo, loop or eval)"),
}

# Command groups with subcommands of their own: command -> (module, main function, description). The
# module's main(argv) -> exit code parses the rest of the command line itself.
GROUPS: dict[str, tuple[str, str, str]] = {
    "annotate": ("prefloop.feedback.cli", "main",
                 "the human feedback web app: serve, import items, export judgments, manage users"),
    "eval": ("prefloop.eval.cli", "main", "evaluate reward models and policies (accuracy, calibration, KL, "
             "diversity, best-of-n over-optimisation, red teaming)"),
}


class CLIError(ValueError):
    pass


def _usage() -> str:
    lines = ["usage: prefloop <command> [options]   (prefloop <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<18} {spec[3]}" for name, spec in COMMANDS.items()]
    lines += [f"  {name:<18} {spec[2]}" for name, spec in GROUPS.items()]
    return "\n".join(lines)


def _split_config_arg(args: list[str]) -> tuple[Path | None, list[str]]:
    for i, a in enumerate(args):
        if a == "--config":
            if i + 1 >= len(args):
                raise CLIError("--config needs a file")
            return Path(args[i + 1]), args[:i] + args[i + 2:]
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1]), args[:i] + args[i + 1:]
    return None, args


def _is_path_type(tp) -> bool:
    if tp is Path:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(a is Path for a in typing.get_args(tp))
    return False


def config_from_yaml(cls, path: Path):
    """Default config of `cls` with the values of a YAML mapping applied (unknown keys are errors)."""
    import yaml

    if not path.exists():
        raise CLIError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CLIError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise CLIError(f"{path}: expected a mapping of option names to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise CLIError(f"{path}: unknown option '{key}'")
        if value is not None and _is_path_type(hints[name]):
            value = Path(value)
        kwargs[name] = value
    return dataclasses.replace(cls(), config=path, **kwargs)


def _known_errors() -> tuple[type[BaseException], ...]:
    from prefloop.data import DataError
    from prefloop.models import ModelLoadError
    from prefloop.recipes.common import ConfigError

    return (DataError, ConfigError, ModelLoadError, CLIError)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from prefloop import __version__

        print(f"prefloop {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command in GROUPS:
        module_name, fn_name, _ = GROUPS[command]
        return int(getattr(importlib.import_module(module_name), fn_name)(rest) or 0)
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, cls_name, fn_name, description = COMMANDS[command]
    module = importlib.import_module(module_name)
    return run_command(getattr(module, cls_name), getattr(module, fn_name), rest, f"prefloop {command}", description)


def run_command(cls, fn, args: list[str], prog: str, description: str) -> int:
    """Parse `args` (after `--config FILE.yaml` values) into `cls` and call `fn` with it; returns the exit
    code: 0, 2 with one `error: ...` line for bad input, 130 when interrupted."""
    import tyro

    try:
        config_path, rest = _split_config_arg(args)
        default = config_from_yaml(cls, config_path) if config_path else cls()
        fn(tyro.cli(cls, args=rest, default=default, prog=prog, description=description))
    except _known_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
