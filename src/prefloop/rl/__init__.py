"""prefloop.rl: the pure tensor math of RLHF (imports torch only).

Log-probs from logits, masked statistics, KL estimators and controllers, per-token rewards and GAE,
losses returning (loss, stats), and typed batch containers. Recipes compose these; see docs/ppo.md.
"""

from .advantages import gae, token_rewards
from .batches import PairLogprobs, PreferenceBatch, RolloutBatch, SFTBatch
from .kl import AdaptiveKLController, FixedKLController, KLController, kl_k1, kl_k2, kl_k3
from .logprobs import TokenLogprobs, entropy_from_logits, logprobs_from_logits, token_logprobs
from .losses import bradley_terry_loss, clipped_value_loss, ppo_policy_loss
from .stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "PairLogprobs",
    "PreferenceBatch",
    "RolloutBatch",
    "SFTBatch",
    "TokenLogprobs",
    "bradley_terry_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "token_logprobs",
    "token_rewards",
]
