"""`prefloop eval judge`: win rate of one policy against another from a file of judgments."""

from __future__ import annotations

from pathlib import Path

from prefloop.data import read_comparisons
from prefloop.errors import ConfigError, require

from ..judges import judged_win_rate, source_map
from .common import finish, read_sample_file


def eval_judge(cfg) -> dict:
    """Win rate of one policy against another from a file of judgments (people's, from the feedback app's
    export, or any judge's), with its Wilson interval."""
    require(cfg, "judge_file")
    if cfg.name == cfg.reference_name:
        raise ConfigError("--name and --reference-name must differ")
    recs = read_comparisons(cfg.judge_file)
    sources = None
    if cfg.policy_samples or cfg.reference_samples:
        if not (cfg.policy_samples and cfg.reference_samples):
            raise ConfigError("--policy-samples and --reference-samples go together")
        sources = source_map({cfg.name: read_sample_file(cfg.policy_samples),
                              cfg.reference_name: read_sample_file(cfg.reference_samples)})
    wr = judged_win_rate(recs, cfg.name, cfg.reference_name, sources, path=cfg.judge_file)
    metrics = {"kind": "eval-judge", "win_rates": {f"{cfg.name} vs {cfg.reference_name}": wr},
               "inputs": {"judge_file": str(cfg.judge_file)}}
    finish(Path(cfg.out), metrics)
    return metrics
