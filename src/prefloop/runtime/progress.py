"""Progress bars (rich) that show the latest metrics; silent on non-main ranks. Without a terminal (nohup, CI)
the bar would be invisible for a whole stage, so a plain line is printed instead every
PREFLOOP_PROGRESS_EVERY seconds (default 30; 0 turns the lines off). Also the one-line summary every
trainer prints when it finishes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
EVERY_ENV = "PREFLOOP_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def _every_from_env() -> float:
    raw = os.environ.get(EVERY_ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_EVERY
    except ValueError:
        return DEFAULT_EVERY  # a typo in a logging knob must not stop a training run


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def _format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


class StepProgress:
    """A bar on a terminal; elsewhere a line every `every` seconds (None: from PREFLOOP_PROGRESS_EVERY).
    `clock` and `stream` are for tests."""

    def __init__(self, description: str, total: int, start: int = 0, enabled: bool = True,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic, stream=None,
                 tty: bool | None = None):
        self.enabled, self.description, self.total = enabled, description, total
        self._progress = None
        self._stream = stream or sys.stderr
        self._clock = clock
        self._done, self._start = start, start
        self._t0 = self._last_line = clock()
        tty = sys.stderr.isatty() if tty is None else tty
        self._every = 0.0 if tty else (_every_from_env() if every is None else every)
        if not enabled or not tty:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self._task = self._progress.add_task(description, total=total, completed=start, info="")
        self._progress.start()

    def update(self, advance: int = 1, **metrics) -> None:
        if not self.enabled:
            return
        self._done += advance
        info = _format_metrics(metrics)
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, info=info)
        elif self._every and self._clock() - self._last_line >= self._every:
            self._last_line = self._clock()
            print(self.line(info), file=self._stream, flush=True)

    def line(self, info: str = "") -> str:
        """`sft: step 40/120 (33%), 1m20s elapsed, ETA 2m40s, loss=1.23`."""
        elapsed = self._clock() - self._t0
        done_here = self._done - self._start  # a resumed run's rate counts only this run's steps
        pct = f" ({100 * self._done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if done_here > 0 and self.total:
            eta = f", ETA {_duration(elapsed / done_here * max(0, self.total - self._done))}"
        return (f"{self.description}: step {self._done}/{self.total}{pct}, {_duration(elapsed)} elapsed{eta}"
                + (f", {info}" if info else ""))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Held-out metrics a trainer reports at its end, in the order shown.
HELD_OUT = (("eval/loss", "loss"), ("eval/accuracy", "accuracy"), ("eval/pair_accuracy", "pair accuracy"),
            ("eval/mae", "rating MAE"))
# What an RL run's last logged update says instead of a loss.
RL_SHOWN = (("rollout/score_mean", "score"), ("kl/k1", "KL"), ("gold/mean", "gold"))


def run_summary(recipe: str, steps: int, history: list[dict], final: dict, model_dir: Path | str) -> str:
    """One line at the end of a training run, the same for every trainer, e.g.
    `sft: 120 steps, final loss 1.23, model in runs/sft-3` or
    `reward: 40 steps, final loss 0.61 (held-out accuracy 0.71), model in runs/reward/model`.
    `history`: the logged metric rows (the last one with a training metric is used); `final`: the run's
    final metrics (held-out results)."""
    last = next((r for r in reversed(history) if any(k.startswith(("loss/", "rollout/")) for k in r)), {})
    parts = [f"{recipe}: {steps} steps"]
    rl = [f"{label} {last[k]:.4g}" for k, label in RL_SHOWN if isinstance(last.get(k), int | float)]
    loss = next((v for k, v in last.items() if k.startswith("loss/") and isinstance(v, int | float)), None)
    if rl:
        parts.append("final " + ", ".join(rl))
    elif loss is not None:
        parts.append(f"final loss {loss:.4g}")
    held = [f"{label} {final[k]:.4g}" for k, label in HELD_OUT if isinstance(final.get(k), int | float)]
    if held:
        parts[-1] += " (held-out " + ", ".join(held) + ")"
    return ", ".join(parts) + f", model in {model_dir}"
