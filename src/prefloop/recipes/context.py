"""RunContext: the bookkeeping every recipe shares, so each recipe file keeps only its own loop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from prefloop.runtime import (
    Checkpointer,
    MetricsLogger,
    StepProgress,
    console,
    make_accelerator,
    run_meta,
    save_hf,
    seed_everything,
    write_json,
)


class RunContext:
    def __init__(self, recipe: str, cfg):
        self.recipe, self.cfg = recipe, cfg
        from prefloop.runtime.accel import PrecisionError

        from .common import ConfigError

        try:
            self.acc = make_accelerator(cfg.precision)
        except PrecisionError as e:
            raise ConfigError(str(e)) from None
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.process_seed = seed_everything(cfg.seed, self.rank)
        self.out = Path(cfg.out)
        self.ckpt = Checkpointer(self.out, self.acc)
        self.resuming = bool(cfg.resume and self.ckpt.exists())
        if cfg.resume and not self.resuming and self.is_main:
            console.print(f"[yellow]{self.out}/checkpoint not found: starting from scratch")
        self.logger: MetricsLogger | None = None

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def init_path(self, name: str, default: str) -> str:
        """Where to load a trained model from: the checkpoint when resuming, else the given path."""
        return str(self.ckpt.model_path(name)) if self.resuming else default

    def resume_state(self) -> dict | None:
        """The checkpoint's saved state (step, optimizer, scheduler, ...) when resuming, else None."""
        return self.ckpt.load_state() if self.resuming else None

    def optimizer(self, params, total_steps: int, state: dict | None = None):
        """AdamW and its learning-rate schedule over `total_steps`, restored from `state` when resuming."""
        from .common import make_optimizer, make_scheduler

        opt = make_optimizer(params, self.cfg)
        sched = make_scheduler(opt, self.cfg, total_steps)
        if state:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        return opt, sched

    def start(self, total: int, state: dict | None = None) -> int:
        """Open the metrics log and progress bar; returns the step to start from."""
        start = int(state["step"]) if state else 0
        self.logger = MetricsLogger(self.out / "metrics.jsonl", enabled=self.is_main,
                                    resume_from_step=start if self.resuming else None)
        self.progress = StepProgress(f"{self.recipe}", total=total, start=start, enabled=self.is_main)
        if self.is_main:
            console.print(f"[bold]{self.recipe}[/]: {total} steps on {self.world} process(es), device "
                          f"{self.device}, seed {self.cfg.seed}" + (f", resuming at step {start}" if start else ""))
        return start

    def log(self, step: int, metrics: dict, show: tuple[str, ...] = ()) -> None:
        if step % max(1, self.cfg.log_every) == 0 or step == 1:
            self.logger.log(step, metrics)
        self.progress.update(1, **{k.split("/")[-1]: metrics[k] for k in show if k in metrics})

    def maybe_checkpoint(self, step: int, total: int, models: dict, tokenizer, state_fn) -> None:
        every = self.cfg.save_every
        if every and step % every == 0 and step < total:
            self.ckpt.save(step, {k: self.acc.unwrap_model(m) for k, m in models.items()}, tokenizer, state_fn())
            # Fault injection for the resume tests: die like a killed job right after this checkpoint.
            if os.environ.get("PREFLOOP_KILL_AFTER_STEP") == str(step):
                os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, model, tokenizer, metrics: dict, data_hashes: dict, name: str = "model",
               extra: dict | None = None) -> dict:
        """Save the final HF directory and prefloop.json (main process), close the progress bar."""
        from prefloop.models.precision import cast_for_saving, precision_record

        self.progress.close()
        precision = precision_record(self.cfg, self.acc.mixed_precision)
        meta = run_meta(self.recipe, self.cfg, data_hashes, metrics, {**(extra or {}), "precision": precision})
        if self.is_main:
            with cast_for_saving(self.acc.unwrap_model(model), precision["saved_dtype"]) as unwrapped:
                save_hf(unwrapped, tokenizer, self.out / name, meta)
            write_json(self.out / "prefloop.json", meta)
        self.acc.wait_for_everyone()
        return meta

    def all_sum(self, x: float) -> float:
        if self.world == 1:
            return float(x)
        t = torch.tensor([float(x)], device=self.device)
        return float(self.acc.reduce(t, reduction="sum").item())
