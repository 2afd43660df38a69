"""Metric logging: one JSON object per line in `metrics.jsonl`, written by the main process only; with
`report_to` also to TensorBoard (event files in OUT/tensorboard) and/or Weights & Biases.

The optional sinks import their packages lazily (extras `prefloop[tensorboard]`, `prefloop[wandb]`); the
command line checks that they can be imported before a run starts (`prefloop.recipes.options.check_report_to`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

from prefloop.errors import InputError


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _scalars(row: dict) -> dict[str, float]:
    """The numeric metrics of a logged row (not its step and wall time, which the sinks record themselves)."""
    return {k: float(v) for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool)}


class TensorBoardSink:
    """Scalars to TensorBoard event files in `log_dir`, one tag per metric name (e.g. loss/sft)."""

    def __init__(self, log_dir: Path, run_config: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        if run_config:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in run_config.items()))

    def log(self, step: int, row: dict) -> None:
        for k, v in _scalars(row).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One Weights & Biases run per output directory; WANDB_PROJECT names the project (default: prefloop),
    WANDB_MODE=offline keeps it on disk (OUT/wandb) for a later `wandb sync`."""

    _open: WandbSink | None = None  # wandb holds one run per process: an earlier stage's is finished first

    def __init__(self, out_dir: Path, run_config: dict | None = None):
        import wandb

        if WandbSink._open is not None:
            WandbSink._open.close()
        WandbSink._open = self
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "prefloop"), name=out_dir.name,
                              dir=str(out_dir), config=run_config or {})

    def log(self, step: int, row: dict) -> None:
        self.run.log(_scalars(row), step=step)

    def close(self) -> None:
        if WandbSink._open is self:
            WandbSink._open = None
            self.run.finish()


SINKS = {"tensorboard": lambda out, cfg: TensorBoardSink(out / "tensorboard", cfg), "wandb": WandbSink}


def _config_record(cfg) -> dict | None:
    """A run's options as plain values (paths as text), for the sinks that record them."""
    if cfg is None:
        return None
    items = dataclasses.asdict(cfg).items() if dataclasses.is_dataclass(cfg) else dict(cfg).items()
    return {k: v if isinstance(v, int | float | str | bool | type(None)) else str(v) for k, v in items}


class MetricsLogger:
    """Appends `{"step": n, "time": s, **metrics}` lines; a resumed run keeps appending to the same file.

    A new run's file is created (replacing an old one) at the first line logged, not before: a run that
    stops on bad input leaves no empty metrics.jsonl behind.

    `report_to` ("none", "tensorboard", "wandb" or a comma list) adds sinks beside the file, opened in its
    directory at the first line logged; `run_config` (the run's config dataclass) is recorded with them."""

    def __init__(self, path: str | Path, enabled: bool = True, resume_from_step: int | None = None,
                 report_to: str = "none", run_config=None):
        self.path = Path(path)
        self.enabled = enabled
        self.t0 = time.time()
        self.history: list[dict] = []
        self._fresh = resume_from_step is None
        names = [n.strip() for n in str(report_to).split(",") if n.strip() not in ("", "none")]
        unknown = [n for n in names if n not in SINKS]
        if unknown:
            raise InputError(f"--report-to: unknown destination {unknown[0]!r} (choose from none, "
                             f"{', '.join(SINKS)})")
        self._sink_names, self._run_config, self.sinks = names, run_config, None
        if not enabled:
            return
        if resume_from_step is not None and self.path.exists():
            # Drop lines logged after the checkpoint we resume from: they will be logged again.
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_from_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
            self.history = [json.loads(ln) for ln in kept]

    def log(self, step: int, metrics: dict) -> dict:
        row = {"step": step, "time": round(time.time() - self.t0, 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        if self.enabled:
            self.history.append(row)
            if self._fresh:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w" if self._fresh else "a") as f:
                self._fresh = False
                f.write(json.dumps(row) + "\n")
            if self.sinks is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                cfg = _config_record(self._run_config)
                self.sinks = [SINKS[n](self.path.parent, cfg) for n in self._sink_names]
            for sink in self.sinks:
                sink.log(step, row)
        return row

    def close(self) -> None:
        """Close the TensorBoard writer and finish the wandb run (metrics.jsonl needs nothing)."""
        for sink in self.sinks or []:
            sink.close()
        self.sinks = None


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
