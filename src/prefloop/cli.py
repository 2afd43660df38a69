"""`prefloop <command> [options]`: parses options into a recipe's config dataclass and dispatches.

Options come from the dataclass fields (their docstrings are the --help text). `--config FILE.yaml`
supplies values first; options on the command line override them. Every option is checked (type, valid
range, output directory; see `prefloop.recipes.options`) before the command loads a model or reads data.
Bad input exits with code 2 and one line on stderr naming what is wrong and where.

`prefloop <command> --help` reads the config class from the recipe's source instead of importing it, so
help comes without importing torch (seconds faster).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
import textwrap
import types
import typing
from pathlib import Path

from prefloop.errors import CLIError, InputError

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
    "report": ("prefloop.eval.report_run", "ReportConfig", "run_report",
               "HTML + Markdown report of a run directory (demo, loop or eval)"),
}

# Command groups with subcommands of their own: command -> (module, main function, description). The
# module's main(argv) -> exit code parses the rest of the command line itself.
GROUPS: dict[str, tuple[str, str, str]] = {
    "annotate": ("prefloop.feedback.cli", "main",
                 "the human feedback web app: serve, import items, export judgments, manage users"),
    "eval": ("prefloop.eval.cli", "main", "evaluate reward models and policies (accuracy, calibration, KL, "
             "diversity, best-of-n over-optimisation, red teaming)"),
    "plan": ("prefloop.plan_cli", "main", "memory per GPU of a training run, term by term, and whether it fits"),
}


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
    from prefloop.recipes.options import type_problem

    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise CLIError(f"{path}: unknown option '{key}'")
        problem = type_problem(value, hints[name])
        if problem:
            raise CLIError(f"{path}: option '{key}' {problem}")
        if value is not None and _is_path_type(hints[name]):
            value = Path(value)
        kwargs[name] = value
    return dataclasses.replace(cls(), config=path, **kwargs)


def _given(args: list[str], config_path: Path | None, default) -> set[str]:
    """Field names the user set, on the command line or in the YAML file (for derived defaults)."""
    names = {a[2:].split("=", 1)[0].replace("-", "_") for a in args if a.startswith("--")}
    names |= {n[3:] for n in names if n.startswith("no_")}
    if config_path is not None:
        changed = {f.name for f in dataclasses.fields(default)
                   if getattr(default, f.name) != getattr(type(default)(), f.name)}
        names |= changed
    return names


def _known_errors() -> tuple[type[BaseException], ...]:
    # One family: DataError, ConfigError, CLIError and ModelLoadError all derive from InputError.
    return (InputError,)


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
    if "-h" in rest or "--help" in rest:
        text = help_text(module_name, cls_name, f"prefloop {command}", description)
        if text is not None:
            print(text)
            raise SystemExit(0)  # as argparse does, so callers of main() see --help the same way
    module = importlib.import_module(module_name)
    return run_command(getattr(module, cls_name), getattr(module, fn_name), rest, f"prefloop {command}", description)


def run_command(cls, fn, args: list[str], prog: str, description: str) -> int:
    """Parse `args` (after `--config FILE.yaml` values) into `cls`, check the options, and call `fn` with
    them; returns the exit code: 0, 2 with one `error: ...` line for bad input, 130 when interrupted."""
    if "-h" in args or "--help" in args:
        text = help_text(cls.__module__, cls.__name__, prog, description)
        if text is not None:
            print(text)
            raise SystemExit(0)
    import tyro

    from prefloop.data.jsonl import skipping_invalid
    from prefloop.recipes.options import apply_trl_derived, translate_trl, validate

    try:
        config_path, rest = _split_config_arg(args)
        trainer = any(f.name == "micro_batch_size" for f in dataclasses.fields(cls))
        rest, trl = translate_trl(rest, cls) if trainer else (rest, {})
        default = config_from_yaml(cls, config_path) if config_path else cls()
        cfg = tyro.cli(cls, args=rest, default=default, prog=prog, description=description)
        given = _given(rest, config_path, default)
        apply_trl_derived(cfg, trl, given, prog.split()[-1])
        validate(cfg, prog.split()[-1], given)
        with skipping_invalid(bool(getattr(cfg, "skip_invalid", False))):
            fn(cfg)
    except _known_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


# -- help without importing the recipe (and torch) -------------------------------------------------------


def _module_tree(module_name: str) -> ast.Module:
    # The file by path: find_spec would import the parent packages, and some of them import torch.
    root = Path(__file__).parent
    first, _, rest = module_name.partition(".")
    if first != "prefloop":
        return ast.parse(Path(importlib.util.find_spec(module_name).origin).read_text())
    base = root.joinpath(*rest.split(".")) if rest else root
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    return ast.parse(path.read_text())


def _imported_from(tree: ast.Module, module_name: str) -> dict[str, str]:
    """name -> absolute module of each `from X import name` at the top of a module."""
    out = {}
    package = module_name.rsplit(".", 1)[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            for a in node.names:
                out[a.asname or a.name] = mod
    return out


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Module-level type aliases (`Precision = Literal[...]`) as source text."""
    return {n.targets[0].id: ast.unparse(n.value) for n in tree.body
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
            and isinstance(n.value, ast.Subscript)}


def _fields_from_source(module_name: str, cls_name: str) -> dict[str, list]:
    """Dataclass fields of `cls_name` as {name: [type text, default text or None, doc]}, bases first."""
    tree = _module_tree(module_name)
    imports, aliases = _imported_from(tree, module_name), _aliases(tree)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    fields: dict[str, list] = {}
    for base in reversed(node.bases):  # a dataclass orders fields from the last base to the first
        if isinstance(base, ast.Name) and base.id != "object":
            fields.update(_fields_from_source(imports.get(base.id, module_name), base.id))
    for i, stmt in enumerate(node.body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        ann = ast.unparse(stmt.annotation)
        for name in aliases.keys() | {k for k in imports if k[:1].isupper()}:
            if name in ann and name in aliases:
                ann = ann.replace(name, aliases[name])
            elif name in ann and name not in aliases and name != "Path":
                ann = ann.replace(name, _aliases(_module_tree(imports[name])).get(name, name))
        nxt = node.body[i + 1] if i + 1 < len(node.body) else None
        doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and \
            isinstance(nxt.value.value, str) else None
        old = fields.get(stmt.target.id)
        fields[stmt.target.id] = [ann, ast.unparse(stmt.value) if stmt.value else None,
                                  doc or (old[2] if old else "")]
    return fields


def _metavar(ann: str, required: bool = False) -> str:
    parts = [p.strip() for p in ann.split("|") if not (required and p.strip() == "None")]
    out = []
    for p in parts:
        if p.startswith("Literal["):
            out.append("{" + ",".join(str(ast.literal_eval(x)) for x in
                                      ast.parse(p, mode="eval").body.slice.elts) + "}"
                       if isinstance(ast.parse(p, mode="eval").body.slice, ast.Tuple)
                       else "{" + str(ast.literal_eval(ast.parse(p, mode="eval").body.slice)) + "}")
        else:
            out.append(p.upper() if p != "None" else "None")
    return "|".join(out)


def help_text(module_name: str, cls_name: str, prog: str, description: str) -> str | None:
    """The --help text of a command from its config class's source, or None if it cannot be read."""
    try:
        fields = _fields_from_source(module_name, cls_name)
    except (OSError, SyntaxError, StopIteration, KeyError, AttributeError, ValueError):
        return None
    lines = [f"usage: {prog} [OPTIONS]", "", description, "", "options:",
             "  -h, --help              show this help message and exit"]
    for name, (ann, default, doc) in fields.items():
        opt = "--" + name.replace("_", "-")
        required = default is None or default == "required()"
        if ann == "bool":
            head = f"{opt}, --no-{name.replace('_', '-')}"
        else:
            head = f"{opt} {_metavar(ann, required)}"
        default_text = "required" if required else f"default: {default.replace('Path(', '').rstrip(')')}" \
            if default.startswith("Path(") else f"default: {default}"
        body = " ".join(f"{' '.join((doc or '').split())} ({default_text})".split())
        wrapped = textwrap.wrap(body, 96, initial_indent=" " * 26, subsequent_indent=" " * 26,
                                break_on_hyphens=False)
        if len(head) <= 22:
            wrapped[0] = f"  {head:<24}" + wrapped[0][26:]
        else:
            wrapped.insert(0, f"  {head}")
        lines += wrapped
    return "\n".join(lines + _alias_lines(fields))


def _alias_lines(fields: dict) -> list[str]:
    """The TRL option names a trainer accepts besides its own (see recipes/options.py: TRL_ALIASES)."""
    if "micro_batch_size" not in fields:  # not a trainer
        return []
    # options.py imports no torch; its parent package's __init__ is empty.
    from prefloop.recipes.options import TRL_ALIASES, TRL_DERIVED

    pairs = [f"--{a.replace('_', '-')} (= --{t.replace('_', '-')})" for a, t in TRL_ALIASES.items()
             if t in fields and a not in fields]
    pairs += [f"--{a.replace('_', '-')}" for a in TRL_DERIVED
              if a != "max_prompt_length" or "max_new_tokens" in fields]
    text = ("TRL's option names are accepted too: " + ", ".join(pairs) + ". --per-device-train-batch-size P with "
            "--gradient-accumulation-steps G on W processes means --micro-batch-size P --batch-size P*G*W.")
    return ["", *textwrap.wrap(text, 96, break_on_hyphens=False)]


if __name__ == "__main__":
    sys.exit(main())
