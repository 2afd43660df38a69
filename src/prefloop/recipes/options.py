"""Checks of a command's options before anything is loaded or written: types, valid ranges, derived
defaults and the output directory. Imports no torch, so the command line can run them first.

Every numeric option of the trainer commands has a declared range in `RANGES` (a test keeps it so);
an option a user left out may take its default from one they gave (`derive_defaults`).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from prefloop.errors import ConfigError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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


def validate(cfg, command: str, given: set[str] | None = None) -> None:
    """All checks that need no model or data, in the order a user fixes them."""
    check_types(cfg)
    derive_defaults(cfg, given or set())
    check_ranges(cfg)
    check_out(cfg, command)
