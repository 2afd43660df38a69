"""Accelerator setup: one place that decides device, precision and process layout."""

from __future__ import annotations

import os

import torch

from prefloop.models.precision import PRECISIONS, Precision, frozen_dtype, resolve_precision

__all__ = ["PRECISIONS", "Precision", "frozen_dtype", "make_accelerator", "resolve_precision"]


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
