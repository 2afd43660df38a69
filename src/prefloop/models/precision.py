"""Which dtype a saved model has: the checkpoint a run started from, and the one it writes.

Training always keeps fp32 master weights (`load_causal_lm` / `load_reward_model` load in float32, whatever
the checkpoint was saved in); bf16 or fp16 is only the dtype of the computation (autocast, `--precision`).
What the run *writes* is a separate choice (`--dtype`): by default the dtype the user started from, so a
bf16 checkpoint comes back as bf16 and an fp32 one as fp32.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from prefloop.errors import PrecisionError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: Precision) -> str:
    """The computation's precision as accelerate names it: "bf16", "fp16" or "no" (fp32).

    Weights stay fp32 in every mode (master copies); bf16 and fp16 are autocast. `auto` means bf16 on a CUDA
    GPU that supports it, fp32 elsewhere (CPU autocast is slower than fp32 here). fp16, for GPUs without
    bf16, also scales the loss (accelerate's GradScaler) so that small gradients do not underflow.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise PrecisionError("--precision fp16 needs a CUDA GPU (use fp32 or bf16 on a CPU)")
    return "no" if precision == "fp32" else precision


def frozen_dtype(precision: Precision) -> torch.dtype:
    """The dtype of models that are never trained (reference policy, reward model during RL): bf16 when
    the computation is bf16 anyway (half the memory of fp32 masters), float32 otherwise (fp16 weights can
    overflow where fp16 autocast, which keeps fp32 weights, does not)."""
    return torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32


SaveDtype = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "float": torch.float32, "half": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the spelling of config.json and prefloop.json)."""
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(name: str | None) -> torch.dtype | None:
    """The dtype a Hugging Face checkpoint was saved in (config.json's `dtype`, `torch_dtype` before
    transformers 4.56), or None when unknown (no model, a hub id not in the cache, no field)."""
    if not name:
        return None
    config_file = Path(str(name)).expanduser() / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    else:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(name), local_files_only=True).to_dict()
        except Exception:  # noqa: BLE001 - the model loader reports a missing model properly
            return None
    for source in (config, config.get("text_config") or {}):
        value = source.get("dtype") or source.get("torch_dtype")
        if isinstance(value, str) and value in _BY_NAME:
            return _BY_NAME[value]
    return None


def resolve_save_dtype(choice: SaveDtype, source: torch.dtype | None) -> torch.dtype:
    """`--dtype auto` saves in the source checkpoint's dtype (float32 for a new model or an unknown one)."""
    if choice == "auto":
        return source if source is not None else torch.float32
    if choice not in DTYPES:
        raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {choice!r}")
    return DTYPES[choice]


@contextmanager
def cast_for_saving(model: nn.Module, dtype: torch.dtype | str):
    """Floating-point parameters and buffers in `dtype` inside the block, the original tensors after it.

    The fp32 masters stay untouched (the block holds them and a `dtype` copy), so a model can be saved in
    bf16 and still be used, or trained further, at full precision afterwards.
    """
    dtype = _BY_NAME[dtype] if isinstance(dtype, str) else dtype
    originals = []
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and t.dtype != dtype:
            originals.append((t, t.data))
            t.data = t.data.to(dtype)
    try:
        yield model
    finally:
        for t, data in originals:
            t.data = data


def precision_record(cfg, compute: str) -> dict:
    """prefloop.json's "precision": the computation ("bf16", "fp16" or "no" = fp32, as accelerate names it),
    the master weights (always float32), the dtype of the checkpoint the run started from (`cfg.model`, or
    `cfg.policy` for RL; none for a new model) and the dtype the model is saved in (`cfg.dtype`)."""
    start = getattr(cfg, "model", None) or getattr(cfg, "policy", None)
    source = checkpoint_dtype(start)
    saved = resolve_save_dtype(getattr(cfg, "dtype", "auto"), source)
    return {"compute": "fp32" if compute == "no" else compute, "master_weights": "float32",
            "source_dtype": dtype_name(source) if source is not None else None, "saved_dtype": dtype_name(saved)}
