"""`prefloop plan`: the memory a training run needs per GPU, term by term, and whether it fits; with --table,
the grid of docs/SCALING.md and the README's "Scaling" section. Imports no torch."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Literal

from prefloop.errors import ConfigError, InputError
from prefloop.plan import PRESETS, SIZE_NAMES, GiB, Plan, Setup, load_shape, plan
from prefloop.recipes.memory import MemoryOptions, RolloutOptions

# The trainers' own defaults of the options the plan reads (a test keeps them equal to the config classes').
RECIPE_DEFAULTS = {
    "sft": {"batch_size": 16, "max_length": 256},
    "reward": {"batch_size": 16, "max_length": 256},
    "dpo": {"batch_size": 16, "max_length": 256},
    "ppo": {"batch_size": 64, "max_length": 256, "max_new_tokens": 32, "rollout_batch_size": 64, "kl_coef": 0.05},
    "grpo": {"batch_size": 64, "max_length": 256, "max_new_tokens": 32, "rollout_batch_size": 64, "kl_coef": 0.04},
    "rloo": {"batch_size": 64, "max_length": 256, "max_new_tokens": 32, "rollout_batch_size": 64, "kl_coef": 0.05},
}
# GPU sizes of the table: the name sold (GB) and the memory torch can use (GiB), e.g. 80 GB: A100 / H100,
# 141 GB: H200 (about 140 GiB visible).
GPUS = {"24 GB": 24.0, "48 GB": 45.0, "80 GB": 80.0, "141 GB": 140.0}
# What a GPU must hold beyond the plan: the CUDA context and kernels (~1 GiB) and the caching allocator's
# fragmentation (10 %, a rule of thumb): fits when peak * 1.1 + 1 GiB <= memory.
SLACK_FRACTION, SLACK_GIB = 0.10, 1.0
DESCRIPTION = "memory per GPU of a training run, term by term, and whether it fits (imports no torch)"


@dataclass(kw_only=True)
class PlanConfig(MemoryOptions, RolloutOptions):
    recipe: Literal["sft", "reward", "dpo", "ppo", "grpo", "rloo"] = "ppo"
    """The trainer to plan for."""
    model: str | None = None
    """A preset (qwen2-0.5b, llama-3.2-1b, llama-3-8b, llama-2-13b), a model directory with config.json, or a
    config.json file. Required unless --table."""
    reward_model: str | None = None
    """Shape of the reward model and PPO's critic, as --model (default: the policy's shape)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """The computation's precision (trained weights are fp32 in every mode; frozen models and a LoRA model's
    frozen base are bf16 under bf16)."""
    lora_r: int = 0
    """LoRA rank, as the trainers' --lora-r (0: every weight trains). The plan needs no peft."""
    processes: int = 1
    """Processes (GPUs) of the run; with --sharding none each holds everything (DDP)."""
    sharding: Literal["none", "fsdp2"] = "none"
    """fsdp2: weights, gradients and optimizer states divided among the processes, gathered a block at a time."""
    batch_size: int | None = None
    """Global batch, as the recipe counts it (default: the recipe's)."""
    micro_batch_size: int | None = None
    """Per-process forward/backward size (default: the process's whole share of --batch-size)."""
    max_length: int | None = None
    """Prompt + response tokens (default: the recipe's, 256)."""
    max_new_tokens: int | None = None
    """RL: tokens sampled per response (default: the recipe's, 32)."""
    rollout_batch_size: int | None = None
    """RL: completions sampled per update (default: the recipe's, 64)."""
    critic: Literal["reward", "value-head"] = "reward"
    """ppo: reward (a trained copy of the reward model) or value-head (a head on the policy)."""
    kl_coef: float | None = None
    """grpo, rloo: 0 loads no reference model (default: the recipe's)."""
    precompute_reference: bool = True
    """dpo: reference log-probs in one pass before training, then the reference model is freed."""
    gpu_memory: float | None = None
    """GPU memory in GiB: say whether the run fits (with 10% + 1 GiB of slack)."""
    table: bool = False
    """Print the grid of ppo, grpo, dpo x 0.5B, 1B, 8B, 13B x full, LoRA r=16, FSDP2 over 8 GPUs: peak per GPU
    and the smallest of 24, 48, 80, 141 GB it fits on, with the batch and memory options given here."""


def check(cfg: PlanConfig) -> None:
    """One-line errors for values the planner cannot use."""
    from prefloop.recipes.options import check_ranges, check_types

    check_types(cfg)
    check_ranges(cfg)
    if cfg.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {cfg.processes}")
    if cfg.gpu_memory is not None and not cfg.gpu_memory > 0:
        raise ConfigError(f"--gpu-memory must be > 0 (GiB), got {cfg.gpu_memory}")
    if cfg.sharding == "fsdp2" and cfg.processes < 2:
        raise ConfigError("--sharding fsdp2 needs --processes of 2 or more")
    if cfg.model is None and not cfg.table:
        raise ConfigError("--model is required (a preset, a model directory or a config.json), unless --table")
    length = cfg.max_length or 256
    if cfg.recipe in ("ppo", "grpo", "rloo") and (cfg.max_new_tokens or 32) >= length:
        raise ConfigError(f"--max-new-tokens ({cfg.max_new_tokens or 32}) must be below --max-length ({length})")


def setup_of(cfg: PlanConfig, recipe: str | None = None, **changes) -> Setup:
    """The planner's view of the options, the recipe's defaults filling the options left out."""
    recipe = recipe or cfg.recipe
    d = RECIPE_DEFAULTS[recipe]
    given = {k: getattr(cfg, k) for k in ("batch_size", "max_length", "max_new_tokens", "rollout_batch_size",
                                           "kl_coef") if getattr(cfg, k) is not None}
    values = {**d, **given}
    rm = load_shape(cfg.reward_model) if cfg.reward_model else None
    base = Setup(recipe=recipe, precision=cfg.precision, lora_r=cfg.lora_r,
                 gradient_checkpointing=cfg.gradient_checkpointing,
                 attn_implementation=cfg.attn_implementation or "sdpa", processes=cfg.processes,
                 sharding=cfg.sharding, micro_batch_size=cfg.micro_batch_size,
                 rollout_micro_batch_size=cfg.rollout_micro_batch_size, critic=cfg.critic,
                 precompute_reference=cfg.precompute_reference, reward_shape=rm, **values)
    return dataclasses.replace(base, **changes)


def fits(peak_bytes: float, gib: float) -> bool:
    return peak_bytes / GiB * (1 + SLACK_FRACTION) + SLACK_GIB <= gib


def _gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def describe(p: Plan) -> str:
    s = p.setup
    what = [s.recipe, f"{p.shape.name} ({p.shape.lm_params() / 1e9:.2f}B parameters)", s.precision,
            f"LoRA r={s.lora_r}" if s.lora_r else "full fine-tuning"]
    if s.gradient_checkpointing:
        what.append("gradient checkpointing")
    what.append(f"{s.processes} process{'es' if s.processes > 1 else ''}" +
                (" with FSDP2" if s.sharding == "fsdp2" else ""))
    return ", ".join(what)


def format_plan(p: Plan, gpu_memory: float | None = None) -> str:
    lines = [f"plan: {describe(p)}", "", f"{'term':<22}{'phase':<11}{'GiB':>9}  detail"]
    for t in p.terms:
        lines.append(f"{t.name:<22}{t.phase:<11}{_gib(t.bytes):>9}  {t.detail}")
    phases = ", ".join(f"{ph} {_gib(p.phase_total(ph))}" for ph in p.phases)
    lines += ["", f"per GPU, by phase (what is always held + the phase's terms), GiB: {phases}",
              f"peak per GPU: {_gib(p.peak)} GiB ({p.peak_phase})"]
    if gpu_memory is not None:
        verdict = "fits" if fits(p.peak, gpu_memory) else "does not fit"
        need = p.peak / GiB * (1 + SLACK_FRACTION) + SLACK_GIB
        lines.append(f"{verdict} in {gpu_memory:g} GiB (needs {need:.1f} GiB with 10% + {SLACK_GIB:g} GiB slack)")
    return "\n".join(lines)


TABLE_CONFIGS = (("full, 1 GPU", {}), ("LoRA r=16, 1 GPU", {"lora_r": 16}),
                 ("full, FSDP2 over 8 GPUs (per GPU)", {"processes": 8, "sharding": "fsdp2"}))


def smallest_gpu(peak_bytes: float) -> str:
    """The smallest of the table's GPU sizes the run fits on, or "none"."""
    return next((name for name, gib in GPUS.items() if fits(peak_bytes, gib)), "none")


def table(cfg: PlanConfig) -> str:
    """Markdown grid: recipe x model rows, one column per configuration, each cell the peak GiB per GPU and the
    smallest GPU (of 24, 48, 80, 141 GB) it fits on."""
    lines = ["| recipe | model | " + " | ".join(label for label, _ in TABLE_CONFIGS) + " |",
             "|" + "---|" * (2 + len(TABLE_CONFIGS))]
    for recipe in ("ppo", "grpo", "dpo"):
        for key, shape in PRESETS.items():
            cells = []
            for _, changes in TABLE_CONFIGS:
                peak = plan(shape, setup_of(cfg, recipe, **changes)).peak
                cells.append(f"{peak / GiB:.1f} GiB: {smallest_gpu(peak)}")
            lines.append(f"| {recipe} | {SIZE_NAMES[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_settings(cfg: PlanConfig) -> str:
    s = setup_of(cfg, "ppo")
    micro = f"micro-batch {cfg.micro_batch_size} per GPU" if cfg.micro_batch_size else \
        "each recipe's whole default batch per GPU at once"
    reward = f"reward model and critic of {cfg.reward_model}'s shape" if cfg.reward_model else \
        "reward model and critic of the policy's shape"
    return (f"{s.precision}; {micro}; max length {s.max_length} (RL: {s.max_new_tokens} new tokens, rollout "
            f"micro-batch {s.rollout_micro}); gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}; "
            f"{reward}")


def run_plan(cfg: PlanConfig) -> str:
    check(cfg)
    if cfg.table:
        return f"settings: {table_settings(cfg)}\n\n{table(cfg)}"
    p = plan(load_shape(cfg.model), setup_of(cfg))
    return format_plan(p, cfg.gpu_memory)


def main(argv: list[str] | None = None) -> int:
    import tyro

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:  # the trainers' help layout (their option names, no TRL aliases here)
        from prefloop.cli import help_text

        text = help_text(__name__, "PlanConfig", "prefloop plan", DESCRIPTION)
        if text is not None:
            print(text.split("\n\nTRL's option names")[0])
            return 0
    try:
        cfg = tyro.cli(PlanConfig, args=args, prog="prefloop plan", description=DESCRIPTION)
        print(run_plan(cfg))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
