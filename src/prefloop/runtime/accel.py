"""Accelerator setup: one place that decides device, precision and process layout."""

from __future__ import annotations

import os
from typing import Literal

import torch

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


def make_accelerator(precision: Precision = "auto", cpu: bool = False, threads: int | None = None):
    """Create the `accelerate.Accelerator` a recipe runs under.

    Launched plainly this is one process; under `accelerate launch --num_processes N` or `torchrun`
    it is one rank of a DDP group (gloo on CPU, NCCL on GPU); under `accelerate launch --config_file` with
    FSDP2 it is one rank of a sharded group (`prefloop.runtime.sharding`); with DeepSpeed, of a ZeRO-2/3 group
    (`prefloop.runtime.deepspeed`).
    """
    from accelerate import Accelerator

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        # Several ranks on one CPU machine must share its cores instead of each taking all of them.
        world = int(os.environ.get("WORLD_SIZE", "1"))
        threads = max(1, (os.cpu_count() or 1) // world)
    if threads:
        torch.set_num_threads(threads)
    from . import deepspeed
    from .sharding import check_supported, enable_on_cpu

    check_supported()
    deepspeed.check_installed()
    mixed = resolve_precision(precision)
    _forget_other_precision(mixed)
    acc = Accelerator(mixed_precision=mixed, cpu=cpu or not torch.cuda.is_available())
    enable_on_cpu(acc)
    deepspeed.enable_on_cpu(acc, mixed)
    return acc


def _forget_other_precision(mixed: str) -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision;
    recipes run one after another in one process (`prefloop loop`, the demo, tests) may differ in
    precision. Only the precision part is reset: the process group (PartialState) stays."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed):
        AcceleratorState._reset_state(reset_partial_state=False)
