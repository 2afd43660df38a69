"""Progress bars (rich) that show the latest metrics; silent on non-main ranks and when not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class StepProgress:
    def __init__(self, description: str, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        if not enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, disable=not sys.stderr.isatty(), transient=False,
        )
        self._task = self._progress.add_task(description, total=total, completed=start, info="")
        self._progress.start()

    def update(self, advance: int = 1, **metrics) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        self._progress.update(self._task, advance=advance, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
