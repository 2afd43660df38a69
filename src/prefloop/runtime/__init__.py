"""Runtime: accelerator setup, seeding, checkpoints and resume, metric logs, progress bars."""

from .accel import make_accelerator, resolve_precision
from .checkpoint import Checkpointer, run_meta, save_hf, write_json
from .metrics import MetricsLogger, read_metrics
from .progress import StepProgress, console
from .seeding import process_seed, rng_state, seed_everything, set_rng_state

__all__ = [
    "Checkpointer", "MetricsLogger", "StepProgress", "console", "make_accelerator", "process_seed",
    "read_metrics", "resolve_precision", "rng_state", "run_meta", "save_hf", "seed_everything",
    "set_rng_state", "write_json",
]
