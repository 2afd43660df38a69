"""Accelerator setup: one place that decides device, precision and process layout."""

from __future__ import annotations

import os
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]


def resolve_precision(precision: Precision) -> str:
    """`auto` means bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere (CPU autocast is slower here)."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return "no" if precision == "fp32" else "bf16"


def make_accelerator(precision: Precision = "auto", cpu: bool = False, threads: int | None = None):
    """Create the `accelerate.Accelerator` a recipe runs under.

    Launched plainly this is one process; under `accelerate launch --num_processes N` or `torchrun`
    it is one rank of a DDP group (gloo on CPU, NCCL on GPU).
    """
    from accelerate import Accelerator

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        # Several ranks on one CPU machine must share its cores instead of each taking all of them.
        world = int(os.environ.get("WORLD_SIZE", "1"))
        threads = max(1, (os.cpu_count() or 1) // world)
    if threads:
        torch.set_num_threads(threads)
    return Accelerator(mixed_precision=resolve_precision(precision), cpu=cpu or not torch.cuda.is_available())
