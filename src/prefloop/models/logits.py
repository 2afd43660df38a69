"""Hidden states -> logits exactly as the model's own forward computes them.

Training projects only the positions a loss needs (prompt and padding cost no vocabulary projection), so it
cannot take `model(...).logits`; it applies the output head itself. Several architectures change the logits
after the head, and skipping that trains against a different distribution from the one the sampler draws
from and the saved model defines:

- Gemma 2 / 3 (and other Gemma-derived models): soft-capping, cap * tanh(z / cap) (`final_logit_softcapping`);
- Cohere: z * logit_scale;
- Granite: z / logits_scaling (HyperCLOVA X multiplies by the same-named field instead);
- Falcon-H1: z * lm_head_multiplier.

`lm_logits` applies the head and the architecture's post-processing. `prefloop.models.checks.check_logits`
compares it, once per loaded model, with the model's own forward on a few tokens and refuses a model whose
forward does something else (an architecture prefloop does not know), rather than training it against the
wrong distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prefloop.rl.logprobs import TokenLogprobs, token_logprobs

PostProcess = Callable[[torch.Tensor], torch.Tensor]


def _softcap(cap: float) -> PostProcess:
    # The same three operations in the same order as the HF forwards, so bf16 results agree bit for bit.
    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / cap) * cap
    return f


def _scale(factor) -> PostProcess:
    return lambda z: z * factor


def _divide(divisor: float) -> PostProcess:
    return lambda z: z / divisor


def logit_postprocess(lm: nn.Module) -> PostProcess | None:
    """The post-processing `lm`'s forward applies after its output head, or None for a plain head."""
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        return _softcap(float(cap))
    if isinstance(getattr(lm, "logit_scale", None), float | int | torch.Tensor):  # Cohere family
        return _scale(lm.logit_scale)
    scaling = getattr(config, "logits_scaling", None)
    if scaling is not None and float(scaling) != 1.0:
        # Granite divides by it; HyperCLOVA X multiplies by a field of the same name.
        return _scale(float(scaling)) if "hyperclovax" in config.model_type else _divide(float(scaling))
    multiplier = getattr(getattr(lm, getattr(lm, "base_model_prefix", ""), None), "lm_head_multiplier", None)
    if multiplier is not None and float(multiplier) != 1.0:  # Falcon-H1
        return _scale(float(multiplier))
    return None


def lm_logits(lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """(..., D) final hidden states -> (..., V) logits, equal to what `lm(...).logits` gives at those positions.

    Every training path that turns hidden states into log-probs (sft, dpo, ppo, grpo/rloo, pretrain) goes
    through here; `hidden` may hold any subset of positions (e.g. only those with a target token).
    """
    logits = lm.get_output_embeddings()(hidden)
    post = logit_postprocess(lm)
    return post(logits) if post is not None else logits


def output_head(lm: nn.Module) -> PostProcess:
    """`lm_logits` bound to `lm`, resolved once: (n, D) hidden states -> (n, V) logits. This is the head that
    `prefloop.rl.token_logprobs` applies chunk by chunk."""
    emb, post = lm.get_output_embeddings(), logit_postprocess(lm)
    return emb if post is None else (lambda h: post(emb(h)))


def hidden_logprobs(lm: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor | None, temperature: float = 1.0,
                    *, entropy: bool = False, chunk_size: int | None = None) -> TokenLogprobs:
    """Log-probs (and entropies) of `tokens` (...) from the final hidden states (..., D) that predict them.

    The one path from a model to token log-probs (PPO, GRPO/RLOO, DPO, SFT, evaluation): `lm`'s output head
    and post-processing, then `token_logprobs`, a chunk of positions at a time, so that a large vocabulary
    never has all of its (positions, V) float32 logits in memory at once.
    """
    vocab = int(lm.get_output_embeddings().weight.shape[0])
    return token_logprobs(hidden, tokens, temperature, head=output_head(lm), vocab_size=vocab,
                          chunk_size=chunk_size, entropy=entropy)

