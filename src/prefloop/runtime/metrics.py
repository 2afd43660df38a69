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
    """Appends `{"step": n, "time": s, **metrics}` lines; a resumed run keeps appending to the same file."""

    def __init__(self, path: str | Path, enabled: bool = True, resume_from_step: int | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.t0 = time.time()
        self.history: list[dict] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is None:
            self.path.write_text("")
        elif self.path.exists():
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
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
