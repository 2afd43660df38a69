"""Token log-probabilities and entropies, temperature-scaled (docs/ppo.md item 5), computed in chunks.

`token_logprobs` is the one implementation every recipe and evaluation uses. It takes either logits or final
hidden states with the output head as a function, and works through the positions a chunk at a time, so
that no (positions, vocabulary) float32 tensor larger than one chunk exists at once (docs/DESIGN.md,
"Log-probs in chunks"). With gradients, each chunk is recomputed in the backward pass
(`torch.utils.checkpoint`) instead of keeping its logits alive until then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Elements of one chunk's (positions, vocabulary) logits: 2^26 float32 values are 256 MiB, so a chunk of a
# 152k vocabulary holds 441 positions and a small vocabulary takes the whole batch in one chunk.
CHUNK_ELEMENTS = 1 << 26

Head = Callable[[torch.Tensor], torch.Tensor]


class TokenLogprobs(NamedTuple):
    logprobs: torch.Tensor | None  # (...) log softmax(logits / T)[token]; None when no tokens were given
    entropy: torch.Tensor | None  # (...) H(softmax(logits / T)), detached; None unless asked for


def _float(z: torch.Tensor) -> torch.Tensor:
    # float32 at least: bf16 log-softmax over a large vocabulary loses the small probabilities.
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _chunk(x: torch.Tensor, tokens: torch.Tensor | None, head: Head | None, temperature: float,
           entropy: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(n, D) hidden states or (n, V) logits -> (n,) log-probs of `tokens` and (n,) entropies."""
    z = _float(head(x) if head is not None else x)
    if temperature != 1.0:
        z = z / temperature
    logp = None
    if tokens is not None:
        # log p = z[token] - logsumexp(z), as torch's fused cross-entropy computes it (and its gradient).
        logp = -F.cross_entropy(z, tokens.long(), reduction="none")
    ent = None
    if entropy:
        with torch.no_grad():
            p = torch.softmax(z, dim=-1)
            # xlogy: entries with logit -inf (p = 0) contribute 0 instead of nan.
            ent = -torch.special.xlogy(p, p).sum(-1)
    return logp, ent


def _chunk_rows(n: int, vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        return chunk_size
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def token_logprobs(
    x: torch.Tensor,
    tokens: torch.Tensor | None,
    temperature: float = 1.0,
    *,
    head: Head | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    entropy: bool = False,
) -> TokenLogprobs:
    """Log-probabilities of `tokens` under softmax(logits / temperature), and optionally the entropies.

    x: (..., V) logits of any float dtype, or with `head` (..., D) final hidden states that `head` maps to
    (n, V) logits chunk by chunk (e.g. `prefloop.models.logits.output_head(lm)`). tokens: (...) int ids,
    or None for entropies only. Per position, z = logits / temperature (in float32 or wider):
    log p(token) = z[token] - logsumexp(z) and H = -sum_v p_v log p_v, p = softmax(z). The same
    temperature must scale the old, new and reference log-probs (Huang et al. 2023, "The N Implementation
    Details of RLHF with PPO", detail 5). Returns (...) float32 tensors (float64 for float64 input).

    chunk_size: positions per chunk; default CHUNK_ELEMENTS // V (`vocab_size`, needed with a head when
    chunk_size is not given). Log-probs carry gradients to x and to the head's parameters; entropies are
    detached (a statistic).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    flat_tokens = None if tokens is None else tokens.reshape(-1)
    if head is None:
        vocab_size = x.shape[-1]
    elif vocab_size is None and chunk_size is None:
        raise ValueError("token_logprobs with a head needs vocab_size or chunk_size")
    rows = _chunk_rows(flat.shape[0], vocab_size or 1, chunk_size)
    # Recompute in the backward only when it saves memory: with gradients and more than one chunk.
    recompute = torch.is_grad_enabled() and flat.shape[0] > rows
    logps, ents = [], []
    for start in range(0, flat.shape[0], rows):
        part = flat[start:start + rows]
        tok = None if flat_tokens is None else flat_tokens[start:start + rows]
        if recompute:
            lp, ent = checkpoint(_chunk, part, tok, head, temperature, entropy, use_reentrant=False)
        else:
            lp, ent = _chunk(part, tok, head, temperature, entropy)
        logps.append(lp)
        ents.append(ent)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def join(parts: list) -> torch.Tensor:
        if not parts:  # no positions at all
            return x.new_zeros(lead, dtype=dtype)
        return torch.cat(parts).reshape(lead)

    return TokenLogprobs(None if tokens is None else join(logps), join(ents) if entropy else None)

