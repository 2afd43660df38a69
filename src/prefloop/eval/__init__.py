"""Evaluation: diversity, judged comparisons, reward-model and over-optimisation metrics, policy evaluation,
`prefloop eval` and reports. The metric modules are pure Python (`stats`: numpy and scipy); models load only in
`sampling` (the evaluation's sampler), `stages` (the evaluation of policies) and `commands` (one module per
`prefloop eval` subcommand)."""

from .compare import pairwise_accuracy, wilson_interval, win_rate
from .diversity import distinct_n, diversity_report, ead, expectation_adjusted_distinct, per_input_self_bleu, self_bleu
from .judges import judged_win_rate, source_map
from .overopt import best_of_n_curve, best_of_n_expectation, fit_bon, fit_rl, kl_best_of_n, peak
from .reward_metrics import (
    accuracy_by_group,
    bt_calibration,
    bt_probability,
    expected_calibration_error,
    reliability_curve,
    reward_model_metrics,
)
from .stats import cluster_mean, find_regressions, length_controlled_win_rate, paired_difference, win_values

__all__ = [
    "accuracy_by_group", "best_of_n_curve", "cluster_mean", "find_regressions", "length_controlled_win_rate",
    "paired_difference", "win_values", "best_of_n_expectation", "bt_calibration", "bt_probability",
    "distinct_n", "diversity_report", "ead", "expectation_adjusted_distinct", "expected_calibration_error",
    "fit_bon", "fit_rl", "judged_win_rate", "kl_best_of_n", "pairwise_accuracy", "peak", "per_input_self_bleu",
    "reliability_curve", "reward_model_metrics", "self_bleu", "source_map", "wilson_interval", "win_rate",
]
