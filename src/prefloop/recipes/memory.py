"""Options that trade memory for compute or parameters: LoRA adapters, gradient checkpointing, the
attention kernel, rollouts sampled in chunks. Each trainer's config inherits the groups it supports;
the model-side logic is in prefloop.models.lora. Imports no torch (the command line checks options first)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from prefloop.errors import ConfigError

AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]


@dataclass(kw_only=True)
class MemoryOptions:
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, about a third
    more compute; the same loss and gradients)."""
    attn_implementation: AttnImplementation | None = None
    """Attention kernel passed to transformers: sdpa, eager or flash_attention_2 (needs the flash-attn
    package and a GPU). Default: transformers' choice for the model."""


@dataclass(kw_only=True)
class LoraOptions(MemoryOptions):
    lora_r: int = 0
    """LoRA rank: train low-rank adapters (and a reward model's score head) instead of every weight; the
    reference policy is the same weights with the adapter disabled. 0: full fine-tuning. Needs
    prefloop[lora] (peft)."""
    lora_alpha: float = 16.0
    """LoRA scaling: the adapter's update is multiplied by alpha / r."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input in training mode (0 keeps log-probs deterministic, as RL needs)."""
    lora_target_modules: str | None = None
    """Comma-separated module names to adapt (e.g. q_proj,v_proj). Default: every linear projection of
    the attention and MLP blocks."""
    merge_lora: bool = False
    """Save OUT/model as a plain model with the adapter merged into the weights (default: the adapter,
    which peft loads; prefloop loads either)."""


@dataclass(kw_only=True)
class RolloutOptions:
    rollout_micro_batch_size: int | None = None
    """Rows decoded together on each process (continuous batching: a row that ends gives its place to the
    next prompt), so the KV cache holds this many rows. The samples do not depend on it. Default: the whole
    rollout batch at once."""


def check_memory_options(cfg) -> None:
    """What the memory options need: peft for LoRA, flash-attn for flash_attention_2, a rank for the other
    LoRA options. The command line runs it with its option checks; the recipes before loading a model."""
    flash = getattr(cfg, "attn_implementation", None) == "flash_attention_2"
    if flash and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("--attn-implementation flash_attention_2 needs the flash-attn package "
                          "(pip install flash-attn) and a GPU")
    r, merge, targets = (getattr(cfg, k, None) for k in ("lora_r", "merge_lora", "lora_target_modules"))
    if (r or merge or targets) and importlib.util.find_spec("peft") is None:
        given = "--lora-r" if r else "--merge-lora" if merge else "--lora-target-modules"
        raise ConfigError(f"{given} needs peft: pip install 'prefloop[lora]'")
    if (merge or targets) and not r:
        raise ConfigError("--merge-lora and --lora-target-modules need --lora-r (a LoRA rank > 0)")


# -- the model-loading lines of the recipes -----------------------------------------------------------------


def _report(ctx, model, cfg) -> None:
    from prefloop.models.lora import parameter_counts
    from prefloop.runtime import console

    if getattr(cfg, "lora_r", 0) and ctx.is_main:
        n = parameter_counts(model)
        console.print(f"LoRA r={cfg.lora_r}: {n['params/trainable']:,} of {n['params/total']:,} parameters "
                      f"trainable ({100 * n['params/trainable'] / max(n['params/total'], 1):.2f}%)")


def load_trained_lm(ctx, name: str, path: str, tok, cfg):
    """The causal LM a recipe trains (from its checkpoint `name` when resuming), memory options applied:
    a new LoRA adapter, or the checkpoint's adapter when resuming; gradient checkpointing; attention kernel."""
    from prefloop.models import load_causal_lm
    from prefloop.models.lora import prepare_for_training

    check_memory_options(cfg)
    lm = load_causal_lm(ctx.init_path(name, path), tok, attn_implementation=cfg.attn_implementation)
    lm = prepare_for_training(lm, cfg, resumed=ctx.resuming)
    _report(ctx, lm, cfg)
    return lm


def load_trained_reward_model(ctx, name: str, path: str, tok, cfg, new_head: bool = False):
    """`load_trained_lm` for a reward model or critic: with LoRA its score head trains in full."""
    from prefloop.models import load_reward_model
    from prefloop.models.lora import prepare_for_training

    check_memory_options(cfg)
    rm = load_reward_model(ctx.init_path(name, path), tok, new_head=new_head,
                           attn_implementation=cfg.attn_implementation)
    rm = prepare_for_training(rm, cfg, resumed=ctx.resuming, reward=True)
    _report(ctx, rm, cfg)
    return rm


def shares_reference(cfg) -> bool:
    """A LoRA policy without --reference: the reference is the policy with its adapter disabled."""
    return bool(getattr(cfg, "lora_r", 0)) and not getattr(cfg, "reference", None)


def final_model(model, cfg):
    """The model to save as OUT/model (merged with --merge-lora) and the parameter counts to record."""
    from prefloop.models.lora import for_saving, parameter_counts

    counts = parameter_counts(model)
    return for_saving(model, getattr(cfg, "merge_lora", False)), counts


def built_model_options(lm, cfg):
    """`MemoryOptions` on a model built from a config (pretraining): attention kernel, checkpointing."""
    from prefloop.models.lora import prepare_for_training

    check_memory_options(cfg)
    if cfg.attn_implementation is not None:
        lm.set_attn_implementation(cfg.attn_implementation)
    return prepare_for_training(lm, cfg)
