"""Evaluation: diversity, judged comparisons, policy evaluation and reports."""

from .compare import pairwise_accuracy, wilson_interval, win_rate
from .diversity import distinct_n, per_input_self_bleu, self_bleu

__all__ = ["distinct_n", "pairwise_accuracy", "per_input_self_bleu", "self_bleu", "wilson_interval", "win_rate"]
