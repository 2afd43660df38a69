"""Load-time checks that prefloop reads a model as its own forward does: `lm_logits` against the logits, the
score at the last token against a sequence classifier's output. Either failing raises `LogitsMismatchError`.

Separate from `logits` because the checks run the trunk (`heads`), which itself builds on `lm_logits`.
"""

from __future__ import annotations

import torch
from torch import nn

from prefloop.errors import LogitsMismatchError

from .heads import hidden_states, sequence_scores
from .logits import lm_logits


def _probe_ids(lm: nn.Module, n: int = 6) -> torch.Tensor:
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    vocab = int(lm.get_input_embeddings().weight.shape[0])
    avoid = {getattr(config, "pad_token_id", None)}
    ids = [i for i in range(3, vocab) if i not in avoid][:n] or [0]
    return torch.tensor([ids], device=lm.get_input_embeddings().weight.device)


@torch.no_grad()
def check_logits(lm: nn.Module, name: str = "model") -> None:
    """Raise LogitsMismatchError when `lm_logits(hidden)` differs from the model's own forward.

    One forward of a few tokens, in eval mode. The tolerance allows only rounding: both sides run the same
    trunk, so a real difference (an unknown scale or cap) is many orders of magnitude larger.
    """
    was_training = lm.training
    lm.eval()
    try:
        ids = _probe_ids(lm)
        mask = torch.ones_like(ids)
        own = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        ours = lm_logits(lm, hidden_states(lm, ids, mask)).float()
    finally:
        lm.train(was_training)
    eps = torch.finfo(next(lm.parameters()).dtype).eps
    tol = 8 * eps * max(1.0, float(own.abs().max()))
    diff = float((own - ours).abs().max())
    if not diff <= tol:
        raise LogitsMismatchError(
            f"{name}: {type(lm).__name__} computes its logits differently from its output head (max difference "
            f"{diff:.3g}); prefloop does not know this architecture's logit post-processing and will not train "
            "it against the wrong distribution")


@torch.no_grad()
def check_scores(model: nn.Module, name: str = "reward model") -> None:
    """The same check for a sequence classifier: the score read at the last token equals its own forward."""
    was_training = model.training
    model.eval()
    try:
        ids = _probe_ids(model)
        mask = torch.ones_like(ids)
        own = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().reshape(-1)
        ours = sequence_scores(model, ids, mask).reshape(-1)
    finally:
        model.train(was_training)
    eps = torch.finfo(next(model.parameters()).dtype).eps
    diff = float((own - ours).abs().max())
    if not diff <= 8 * eps * max(1.0, float(own.abs().max())):
        raise LogitsMismatchError(
            f"{name}: {type(model).__name__} computes its score differently from its `score` head at the last "
            f"token (max difference {diff:.3g}); prefloop cannot train or read this reward model correctly")
