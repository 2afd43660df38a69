"""Models: load and save policies, reward models and critics; small configs for tests and the demo."""

from .checks import check_logits, check_scores
from .configs import ARCHITECTURES, SIZES, arch_config, gpt2_config, llama_config
from .heads import (
    ValueHead,
    hidden_states,
    last_token_index,
    position_ids,
    sequence_scores,
    trunk,
)
from .loading import (
    disable_dropout,
    init_score_head,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from .logits import hidden_logprobs, lm_logits
from .wrappers import (
    CausalLMLoss,
    CriticForward,
    ResponseForward,
    RewardScorer,
    score_in_batches,
)

__all__ = [
    "ARCHITECTURES", "arch_config", "check_logits", "check_scores", "lm_logits", "hidden_logprobs",
    "SIZES", "CausalLMLoss", "CriticForward", "ResponseForward", "RewardScorer",
    "score_in_batches", "ValueHead", "disable_dropout", "gpt2_config",
    "hidden_states", "init_score_head", "last_token_index", "llama_config", "load_causal_lm",
    "load_reward_model", "load_tokenizer", "position_ids", "sequence_scores", "trunk",
]
