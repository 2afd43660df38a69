"""DeepSpeed ZeRO-2/3 through accelerate: what runs under it, how prefloop's batch plan becomes DeepSpeed's, how
ZeRO-3's partitioned weights are used outside the training forward and saved.

`accelerate launch --config_file examples/accelerate/zero3.yaml` (or zero2.yaml) sets ACCELERATE_USE_DEEPSPEED and
the ZeRO stage in the environment. Then:

- **Batch plan.** accelerate derives DeepSpeed's micro-batch size from a prepared DataLoader; prefloop prepares
  none, so `configure` writes the micro-batch size and `gradient_accumulation_steps: 1` into the plugin's config
  before `prepare`. prefloop accumulates its micro-batches itself (the losses are already divided by the global
  batch's token or pair count): DeepSpeed must neither rescale them by its accumulation count nor step before the
  last micro-batch, so `accumulating` marks the others as no accumulation boundary.
- **Loading.** Models load whole on every process and `prepare` partitions them (ZeRO-3: each process keeps 1/N of
  every parameter; ZeRO-2: of the gradients and optimizer state). `zero3_init_flag` is turned off: with it,
  transformers builds models with parameters of shape 0 (the real shape in `ds_shape`), which code that reads
  shapes (the pad-token resize, a frozen reference model called outside DeepSpeed) takes for real.
- **Whole weights.** `gathered` all-gathers a ZeRO-3 model's parameters for a block (the rollout's sampler and
  held-out evaluations). Unlike FSDP2's, ZeRO-3's hooks sit on every submodule, so calling the model's parts
  directly is correct without it; the block gathers once per rollout instead of module by module at each decoding
  step (not measured). `full_state_dict` reads the gathered parameters,
  so the main process writes a plain Hugging Face directory whatever the stage. PPO's policy and critic are one
  prepared module (`sharding.Joint`: accelerate's DeepSpeed prepares one model); frozen models (reference, reward
  model) stay whole on every process.
- **Refused** in one line: pretraining, LoRA, and checkpoints (`--save-every`, `--resume`), whose optimizer state
  DeepSpeed partitions its own way.

accelerate runs DeepSpeed only where there is a GPU; on a machine without one `enable_on_cpu` switches its DeepSpeed
code path on over the gloo process group (DeepSpeed's CPU accelerator), which is how the CPU tests run it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from torch import nn

from prefloop.errors import ConfigError

SUPPORTED = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")


def requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("true", "1", "yes")


def check_installed() -> None:
    """A DeepSpeed launch without the deepspeed package stops in one line, before any model loads."""
    if not requested():
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the accelerate config asks for DeepSpeed, which is not importable ({e}): "
                          "pip install 'prefloop[deepspeed]'") from None


def is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.state.distributed_type == DistributedType.DEEPSPEED


def stage(acc) -> int:
    """The ZeRO stage of a DeepSpeed accelerator (0 without DeepSpeed)."""
    if not is_deepspeed(acc):
        return 0
    return int(acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def _plugin():
    from accelerate.utils import DeepSpeedPlugin

    # Read from the launcher's ACCELERATE_DEEPSPEED_* environment, like accelerate's own; models load whole.
    return DeepSpeedPlugin(zero3_init_flag=False)


def enable_on_cpu(acc, mixed: str) -> None:
    """accelerate ignores a DeepSpeed launch on a machine without a GPU (its CPU path is plain DDP); switch its
    DeepSpeed code path on for the gloo group, as it would be on GPUs. A no-op unless DeepSpeed was asked for."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = acc.state
    if not requested():
        return
    if state.distributed_type == DistributedType.DEEPSPEED:
        # On GPUs accelerate made the plugin itself, with zero3_init_flag as the config says: models load whole.
        state.deepspeed_plugin.zero3_init_flag = False
        _forget_zero3_init()
        return
    if acc.num_processes < 2:
        # Without a GPU, one process would silently train unpartitioned.
        raise ConfigError("DeepSpeed without a GPU needs 2 or more processes (accelerate launch --num_processes N)")
    plugin = _plugin()
    state.distributed_type = DistributedType.DEEPSPEED
    plugin.set_mixed_precision(mixed)
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = {"default": plugin}
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
    _forget_zero3_init()


def _forget_zero3_init() -> None:
    # The plugin registers its config with transformers whatever zero3_init_flag says; while it is registered,
    # from_pretrained builds partitioned (shape 0) parameters.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def check_recipe(acc, recipe: str, cfg) -> None:
    """Refuse, in one line, what prefloop does not run under DeepSpeed; then write the batch plan into the config."""
    if not is_deepspeed(acc):
        return
    if recipe not in SUPPORTED:
        raise ConfigError(f"{recipe} is not supported under DeepSpeed: only {', '.join(SUPPORTED)} are; run it with "
                          "FSDP2 (accelerate launch --config_file examples/accelerate/fsdp2.yaml) or data-parallel")
    if getattr(cfg, "lora_r", 0):
        raise ConfigError("--lora-r is not supported under DeepSpeed: run LoRA data-parallel (without --config_file)")
    if cfg.save_every or cfg.resume:
        raise ConfigError("--save-every and --resume are not supported under DeepSpeed (it partitions the optimizer "
                          "state its own way): train without checkpoints, or shard with FSDP2")
    if cfg.batch_size % acc.num_processes:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                          f"({acc.num_processes}) under DeepSpeed")
    configure(acc, cfg)


def configure(acc, cfg) -> None:
    """prefloop's batch plan in DeepSpeed's config (accelerate would read it from a prepared DataLoader)."""
    config = acc.state.deepspeed_plugin.deepspeed_config
    per_process = cfg.batch_size // acc.num_processes
    micro = min(per_process, getattr(cfg, "micro_batch_size", None) or per_process)
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = 1  # prefloop accumulates (see `accumulating`)
    config["train_batch_size"] = micro * acc.num_processes
    # prefloop clips in RunContext.step's place: DeepSpeed steps inside backward, so it must clip there.
    config["gradient_clipping"] = float(cfg.max_grad_norm or 0.0)


@contextmanager
def accumulating(acc, last: bool) -> Iterator[None]:
    """A micro-batch's backward: DeepSpeed reduces gradients and steps only after the last micro-batch of a step."""
    if not is_deepspeed(acc) or last:
        yield
        return
    acc.gradient_state._set_sync_gradients(False)
    try:
        yield
    finally:
        acc.gradient_state._set_sync_gradients(True)


def _partitioned(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


def gathered(acc, module: nn.Module):
    """Whole ZeRO-3 parameters of `module` inside the block (read-only: changes are not written back). A no-op
    under ZeRO-2 and without DeepSpeed. Collective: every process must enter it."""
    params = _partitioned(module) if stage(acc) == 3 else []
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def full_state_dict(acc, module: nn.Module) -> dict | None:
    """The whole state dict of a ZeRO-3 `module` on the CPU of the main process (None on the others); None without
    ZeRO-3 (its parameters are whole: save it as it is). Collective."""
    if stage(acc) != 3 or not _partitioned(module):
        return None
    with gathered(acc, module):
        if not acc.is_main_process:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
