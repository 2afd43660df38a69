"""Metric logging: one JSON object per line in `metrics.jsonl`, written by the main process only."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """Appends `{"step": n, "time": s, **metrics}` lines; a resumed run keeps appending to the same file.

    A new run's file is created (replacing an old one) at the first line logged, not before: a run that
    stops on bad input leaves no empty metrics.jsonl behind."""

    def __init__(self, path: str | Path, enabled: bool = True, resume_from_step: int | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.t0 = time.time()
        self.history: list[dict] = []
        self._fresh = resume_from_step is None
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
        return row


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
