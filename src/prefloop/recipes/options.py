"""Checks of a command's options before anything is loaded or written: types, valid ranges, derived
defaults and the output directory. Imports no torch, so the command line can run them first.

Every numeric option of the trainer commands has a declared range in `RANGES` (a test keeps it so);
an option a user left out may take its default from one they gave (`derive_defaults`).

The option groups several commands share are declared here once (`ConfigFileOption`, `SamplingOptions`,
`RLSamplingOptions`, `PolicyOptions`, `RewardModelOptions`, `RewardOptions`): a command's config class inherits
them, so each flag has one name and one help text everywhere. Options a command cannot run without are
declared with `required()`: help shows them as required.
`TRL_ALIASES` maps option names of TRL's trainers onto prefloop's where they mean the same thing.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefloop.errors import ConfigError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def required():
    """The default of an option the command cannot run without: None in Python (so a config can be built
    step by step) and "required" in --help; the command refuses to start without it (`common.require`)."""
    return dataclasses.field(default=None, metadata={"required": True})


# -- option groups shared by several commands ------------------------------------------------------------

# The combination rules of prefloop.models.ensemble (repeated here so that parsing options imports no torch;
# a test keeps the two equal).
EnsembleMode = Literal["mean", "min", "mean-std"]


@dataclass(kw_only=True)
class ConfigFileOption:
    config: Path | None = None
    """YAML file with option values (a mapping such as `max_steps: 100`); options given on the command line
    override it."""


@dataclass(kw_only=True)
class EpochsOption:
    epochs: float = 1.0
    """Passes over the data (> 0; fractions allowed), used when --max-steps is not given."""


@dataclass(kw_only=True)
class SamplingOptions:
    """How responses are sampled. These defaults sample the model's own distribution (sample, best-of-n,
    rejection sampling); RL commands override them (`RLSamplingOptions`)."""

    max_new_tokens: int = 64
    """Most tokens sampled per response (>= 1); a response ends earlier at EOS."""
    temperature: float = 1.0
    """Sampling temperature (> 0): logits are divided by it; 1 samples the model's distribution, lower is greedier."""
    top_p: float = 1.0
    """Nucleus sampling, in (0, 1]: sample among the most likely tokens whose probabilities sum to top-p (1: off)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (>= 0; 0: off)."""


@dataclass(kw_only=True)
class RLSamplingOptions(SamplingOptions):
    """Sampling inside an RL update: shorter and cooler by default than SamplingOptions, since every update
    samples a whole rollout batch and the reference log-probs must be computed at the same temperature."""

    max_new_tokens: int = 32
    temperature: float = 0.7
    """Sampling temperature (> 0); the same temperature scales old, new and reference log-probs (docs/ppo.md
    item 5)."""
    stop_at_eos: bool = True
    """Stop a response at EOS; with --no-stop-at-eos sample fixed length (with --truncate-token)."""
    truncate_token: str | None = None
    """Fixed-length mode: mask everything after the first occurrence of this token (e.g. '.')."""


@dataclass(kw_only=True)
class PolicyOptions:
    policy: str | None = required()
    """Policy to train, usually the SFT checkpoint: a local Hugging Face directory or a hub id."""
    prompts: Path | None = required()
    """Prompts JSONL: {"prompt": text or messages}."""


@dataclass(kw_only=True)
class RewardModelOptions:
    reward: str | None = None
    """Reward model directory (a sequence classifier with one output), an ensemble directory (with
    ensemble.json, as `prefloop reward --ensemble-size N` writes) or several directories joined by commas."""
    ensemble_mode: EnsembleMode = "mean"
    """How an ensemble's scores combine: mean, min (worst case) or mean-std (mean - lambda * std)."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-mode mean-std (>= 0)."""


@dataclass(kw_only=True)
class RewardOptions(RewardModelOptions):
    """A reward model, or a scoring function in its place."""

    reward_fn: str | None = None
    """Scoring function instead of a reward model: package.module:function, called as fn(prompts, responses)
    and returning one float per response (e.g. a verifier); or world:DIR for a synthetic world's gold judge."""


@dataclass(frozen=True)
class Range:
    """lo <= x <= hi (or < where open); None: unbounded on that side. Floats must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "a finite number"


AT_LEAST_1, AT_LEAST_0, POSITIVE, FRACTION = Range(1), Range(0), Range(0, lo_open=True), Range(0, 1)
ANY = Range()

# Valid values of every numeric option of the trainer commands, by field name (the same name means the same
# thing in every command). None stays allowed where the field's type allows it (a derived default).
RANGES: dict[str, Range] = {
    # shared by the training commands
    "seed": Range(0, 2**63 - 1), "max_steps": AT_LEAST_1, "batch_size": AT_LEAST_1, "micro_batch_size": AT_LEAST_1,
    "max_length": Range(2),  # a prompt token and a response token at least
    "lr": POSITIVE, "warmup_ratio": Range(0, 1, hi_open=True), "weight_decay": AT_LEAST_0, "adam_eps": POSITIVE,
    "max_grad_norm": AT_LEAST_0, "save_every": AT_LEAST_0, "log_every": AT_LEAST_1, "epochs": POSITIVE,
    # data splits, models
    "eval_fraction": Range(0, 1, hi_open=True), "vocab_size": Range(258),  # 256 bytes + EOS + pad
    "ensemble_size": AT_LEAST_1, "ensemble_lambda": AT_LEAST_0,
    # preference optimisation
    "beta": POSITIVE, "label_smoothing": Range(0, 0.5, hi_open=True),
    # sampling
    "max_new_tokens": AT_LEAST_1, "temperature": POSITIVE, "top_p": Range(0, 1, lo_open=True), "top_k": AT_LEAST_0,
    "num_samples": AT_LEAST_1, "best_of": AT_LEAST_1, "sample_batch_size": AT_LEAST_1,
    # RL
    "rollout_batch_size": AT_LEAST_1, "ppo_epochs": AT_LEAST_1, "epochs_per_rollout": AT_LEAST_1,
    "num_generations": Range(2), "kl_coef": AT_LEAST_0, "kl_target": POSITIVE, "kl_horizon": AT_LEAST_1,
    "keep_every": AT_LEAST_0, "gamma": FRACTION, "lam": FRACTION, "clip_eps": POSITIVE, "clip_eps_value": POSITIVE,
    "vf_coef": AT_LEAST_0, "critic_lr": POSITIVE, "no_eos_penalty": ANY,
    # rejection sampling
    "rounds": AT_LEAST_1, "prompts_per_round": AT_LEAST_1,
    # memory (recipes/memory.py)
    "lora_r": AT_LEAST_0, "lora_alpha": POSITIVE, "lora_dropout": Range(0, 1, hi_open=True),
    "rollout_micro_batch_size": AT_LEAST_1,
}


def _hint_types(hint) -> tuple[list, bool]:
    """(accepted base types or Literal values, whether None is accepted) of a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        inner = [_hint_types(a)[0] for a in args if a is not type(None)]
        return [t for ts in inner for t in ts], type(None) in args
    if origin is typing.Literal:
        return [("literal", typing.get_args(hint))], False
    return [hint], False


def type_problem(value, hint) -> str | None:
    """Why `value` does not fit `hint` (int, float, str, bool, Path, Literal, optional), or None."""
    accepted, optional = _hint_types(hint)
    if value is None:
        return None if optional else "must be given"
    for t in accepted:
        if isinstance(t, tuple):
            if value in t[1]:
                return None
        elif t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return None
        elif t is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        elif t is Path and isinstance(value, str | Path):
            return None
        elif t in (str, bool) and type(value) is t:
            return None
        elif t not in (int, float, str, bool, Path):
            return None  # a type these checks do not cover
    names = [", ".join(map(repr, t[1])) if isinstance(t, tuple) else getattr(t, "__name__", str(t)) for t in accepted]
    what = f"one of {names[0]}" if accepted and isinstance(accepted[0], tuple) else " or ".join(names)
    return f"must be {what}, got {type(value).__name__} {value!r}"


def check_types(cfg, where: str = "") -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        problem = type_problem(getattr(cfg, f.name), hints[f.name])
        if problem and not (problem == "must be given"):
            raise ConfigError(f"{where}{flag(f.name)} {problem}")


def check_ranges(cfg) -> None:
    """Every numeric option inside its declared range; floats finite (NaN and inf are refused)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        allowed = RANGES.get(f.name, ANY)
        if not allowed.contains(value):
            raise ConfigError(f"{flag(f.name)} must be {allowed.describe()}, got {value}")


def _largest_divisor_up_to(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def derive_defaults(cfg, given: set[str]) -> None:
    """Options the user left out follow the ones given: --rollout-batch-size a multiple of
    --num-generations, --batch-size a divisor of --rollout-batch-size (the largest up to its default)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    if {"rollout_batch_size", "num_generations"} <= names and "rollout_batch_size" not in given:
        k = cfg.num_generations
        if k >= 1 and cfg.rollout_batch_size % k:
            cfg.rollout_batch_size = k * max(1, cfg.rollout_batch_size // k)
    if {"rollout_batch_size", "batch_size"} <= names and "batch_size" not in given:
        rollout = cfg.rollout_batch_size
        if rollout >= 1 and cfg.batch_size >= 1 and rollout % cfg.batch_size:
            cfg.batch_size = _largest_divisor_up_to(rollout, cfg.batch_size)


# Files that mark a directory as holding a finished run's output.
RUN_MARKERS = ("prefloop.json", "model", "ensemble.json", "summary.json")


def holds_run(d: Path) -> Path | None:
    """The first file of a finished run in `d`, or None."""
    return next((d / m for m in RUN_MARKERS if (d / m).exists()), None)


def default_out(command: str, resume: bool, root: Path = Path("runs")) -> Path:
    """runs/<command>, or the first runs/<command>-N that holds no run; with `resume` the newest that exists."""
    candidates = [root / command] + [root / f"{command}-{i}" for i in range(2, 10_000)]
    if resume:
        existing = [c for c in candidates[:1] if c.exists()]
        i = 2
        while (root / f"{command}-{i}").exists():
            existing.append(root / f"{command}-{i}")
            i += 1
        return existing[-1] if existing else candidates[0]
    return next(c for c in candidates if not (c.exists() and any(c.iterdir())))


def _check_writable(out: Path) -> None:
    """`out` can be created (or written to): its nearest existing ancestor is a writable directory."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {out}: {probe} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write in {probe} ({e.strerror or e})") from None


def check_out(cfg, command: str) -> None:
    """Resolve a left-out --out and check it before anything is loaded: a directory (a file for
    commands that write one file) that can be written, and not another run's unless asked."""
    out_field = next((f for f in dataclasses.fields(cfg) if f.name == "out"), None)
    if out_field is None:
        return
    run_dir = hasattr(cfg, "overwrite")  # the training commands' run directories
    # Other commands: only those that write one file (their default has a suffix, e.g. samples.jsonl).
    if not run_dir and not Path(str(out_field.default)).suffix:
        return
    if cfg.out is None and run_dir:
        cfg.out = default_out(command, bool(cfg.resume))
    if cfg.out is None:
        return
    out = Path(cfg.out)
    if not run_dir:
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a directory, expected a file")
        _check_writable(out.parent)
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a directory")
    _check_writable(out)
    marker = holds_run(out) if out.is_dir() else None
    if marker is not None and not (cfg.overwrite or cfg.resume):
        raise ConfigError(f"--out {out} holds another run ({marker}); pass --overwrite to replace it, --resume to "
                          "continue it, or choose another --out")


# --report-to: where metrics go besides OUT/metrics.jsonl -> (package to import, extra that installs it).
REPORT_SINKS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def report_sinks(value: str) -> list[str]:
    """The sinks of a --report-to value: a comma list of tensorboard and wandb; "none" adds nothing (the
    same reading as `prefloop.runtime.metrics.MetricsLogger`, which this module cannot import without torch)."""
    names = [n.strip() for n in str(value).split(",") if n.strip() not in ("", "none")]
    for n in names:
        if n not in REPORT_SINKS:
            raise ConfigError(f"--report-to: unknown destination {n!r} (choose none, tensorboard, wandb, "
                              "or a comma-separated list)")
    return list(dict.fromkeys(names))


def check_report_to(cfg) -> None:
    """Each --report-to destination's package can be imported (checked before anything is written)."""
    for name in report_sinks(getattr(cfg, "report_to", "none")):
        package, extra = REPORT_SINKS[name]
        try:
            importlib.import_module(package)
        except ImportError:
            raise ConfigError(f"--report-to {name} needs the {package} package: pip install 'prefloop[{extra}]'") \
                from None


def validate(cfg, command: str, given: set[str] | None = None) -> None:
    """All checks that need no model or data, in the order a user fixes them."""
    from .memory import check_memory_options

    check_types(cfg)
    check_report_to(cfg)
    derive_defaults(cfg, given or set())
    check_ranges(cfg)
    check_memory_options(cfg)
    check_out(cfg, command)


# -- TRL's option names ----------------------------------------------------------------------------------

# TRL option -> prefloop option where the two mean the same thing; an alias applies to a command that has the
# target option and no option of the alias's own name (so DPO's --beta stays DPO's beta, while in GRPO and
# RLOO, as in TRL's trainers, --beta is the KL coefficient).
TRL_ALIASES: dict[str, str] = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "adam_epsilon": "adam_eps", "output_dir": "out",
    "logging_steps": "log_every", "save_steps": "save_every", "num_ppo_epochs": "ppo_epochs",
    "num_iterations": "epochs_per_rollout", "cliprange": "clip_eps", "epsilon": "clip_eps",
    "cliprange_value": "clip_eps_value", "response_length": "max_new_tokens",
    "max_completion_length": "max_new_tokens", "rloo_k": "num_generations", "beta": "kl_coef",
}
# Mapped onto the global batch (per-device x accumulation x processes = --batch-size) or onto --max-length
# (prompt + response) after parsing, since they depend on other options.
TRL_DERIVED = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_prompt_length")


def _option_value(args: list[str], i: int) -> tuple[str, str | None, int]:
    """(name, value, number of args used) of the option at args[i] (`--name value` or `--name=value`)."""
    name, eq, value = args[i][2:].partition("=")
    if eq:
        return name.replace("-", "_"), value, 1
    return name.replace("-", "_"), (args[i + 1] if i + 1 < len(args) else None), 2


def translate_trl(args: list[str], cls) -> tuple[list[str], dict[str, int]]:
    """Command-line args with TRL's option names renamed to prefloop's, and the values of the TRL options
    that `apply_trl_derived` maps after parsing."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out: list[str] = []
    derived: dict[str, int] = {}
    i = 0
    while i < len(args):
        a = args[i]
        name = a[2:].partition("=")[0].replace("-", "_") if a.startswith("--") else ""
        if name in TRL_ALIASES and name not in fields and TRL_ALIASES[name] in fields:
            out.append(flag(TRL_ALIASES[name]) + a[2 + len(name):])
        elif name in TRL_DERIVED and name not in fields:
            _, value, used = _option_value(args, i)
            try:
                derived[name] = int(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(f"{flag(name)} needs an integer, got {value!r}") from None
            if derived[name] < 1:
                raise ConfigError(f"{flag(name)} must be >= 1, got {derived[name]}")
            i += used
            continue
        else:
            out.append(a)
        i += 1
    return out, derived


def _world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def apply_trl_derived(cfg, derived: dict[str, int], given: set[str], command: str) -> None:
    """Map TRL's per-device batch, gradient accumulation and prompt length exactly onto --batch-size,
    --micro-batch-size and --max-length, or refuse in one line where they cannot be."""
    names = {f.name for f in dataclasses.fields(cfg)}
    per_device = derived.get("per_device_train_batch_size")
    accum = derived.get("gradient_accumulation_steps")
    if per_device is not None or accum is not None:
        if "micro_batch_size" not in names:
            raise ConfigError(f"--per-device-train-batch-size / --gradient-accumulation-steps: prefloop {command} "
                              "has no gradient accumulation; use --batch-size")
        world = _world_size()
        if per_device is not None:
            total = per_device * (accum or 1) * world
            if "batch_size" in given and cfg.batch_size != total:
                raise ConfigError(f"--per-device-train-batch-size {per_device} x --gradient-accumulation-steps "
                                  f"{accum or 1} x {world} processes = {total}, but --batch-size is {cfg.batch_size}")
            cfg.batch_size, cfg.micro_batch_size = total, per_device
            given |= {"batch_size", "micro_batch_size"}
        else:
            derive_defaults(cfg, given)  # the batch this divides: as the other options make it
            if cfg.batch_size % (accum * world):
                raise ConfigError(f"--gradient-accumulation-steps {accum}: --batch-size {cfg.batch_size} is not a "
                                  f"multiple of {accum} x {world} processes")
            cfg.micro_batch_size = cfg.batch_size // (accum * world)
            given.add("micro_batch_size")
    prompt = derived.get("max_prompt_length")
    if prompt is not None:
        if "max_new_tokens" not in names:
            raise ConfigError(f"--max-prompt-length: prefloop {command} cuts prompts from the left to fit "
                              "--max-length (prompt + response); use --max-length")
        if "max_length" in given:
            raise ConfigError("--max-prompt-length and --max-length: give one (--max-length = prompt + "
                              "--max-new-tokens)")
        cfg.max_length = prompt + cfg.max_new_tokens
        given.add("max_length")
