"""prefloop.rl: the pure tensor math of RLHF (imports torch only).

Token log-probs (from logits or hidden states, in chunks), masked statistics, KL estimators and controllers,
per-token rewards and GAE, losses returning (loss, stats), and typed batch containers. Recipes compose these;
see docs/ppo.md.
"""

from .advantages import gae, token_rewards
from .batches import PairLogprobs, PreferenceBatch, RolloutBatch, SFTBatch
from .kl import AdaptiveKLController, FixedKLController, KLController, kl_k1, kl_k2, kl_k3
from .logprobs import TokenLogprobs, token_logprobs
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
    "explained_variance",
    "gae",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "token_logprobs",
    "token_rewards",
]
