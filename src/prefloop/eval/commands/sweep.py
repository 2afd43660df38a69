"""`prefloop eval sweep`: gold reward against diversity over several evaluated runs (the diversity trade)."""

from __future__ import annotations

from pathlib import Path

from prefloop.errors import ConfigError, DataError

from ..report_run import read_run_metrics
from .common import finish

# "kl_to_sft": the name of the KL to the reference in metrics written by earlier versions of prefloop.
SWEEP_KEYS = ("gold_reward_mean", "reward_model_mean", "kl_to_ref", "kl_to_sft", "distinct_2", "self_bleu",
              "per_input/distinct_2", "per_input/self_bleu", "per_input/ead", "entropy", "hallucination_rate",
              "needless_refusal_rate")


def eval_sweep(cfg) -> dict:
    """Gold reward against diversity over several evaluated runs (one per KL coefficient, say): the points a
    user picks from, between a reliable assistant and a creative writing partner."""
    if not cfg.runs:
        raise ConfigError("missing option --runs (evaluated run directories)")
    points = []
    for run in cfg.runs:
        m = read_run_metrics(Path(run)) if Path(run).is_dir() else None
        if not m or not isinstance(m.get("stages"), dict) or not m["stages"]:
            raise DataError.whole(Path(run) / "metrics.json", "no stages (run `prefloop eval policy --out` first)")
        stage = cfg.stage or list(m["stages"])[-1]
        if stage not in m["stages"]:
            raise DataError.whole(Path(run) / "metrics.json", f"no stage '{stage}' (has {', '.join(m['stages'])})")
        row = m["stages"][stage]
        points.append({"run": Path(run).name, "stage": stage, **{k: row.get(k) for k in SWEEP_KEYS if k in row}})
    metrics = {"kind": "eval-sweep", "sweep": {"points": points, "diversity": cfg.diversity}}
    finish(Path(cfg.out), metrics)
    return metrics
