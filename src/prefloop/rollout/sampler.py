"""Batched sampling with a KV cache: the rollout phase of RL (docs/ppo.md items 1-6).

One prefill over the left-padded prompts, then one token per step. Two paths give the same samples for the
same seed (the random draws are indexed by prompt and step, `uniforms`): continuous batching (`continuous.py`,
the default where the model's cache allows it), where rows that end leave the batch and waiting prompts take
their slots, and the rectangular path here, where rows that have ended keep running and emit pad until the
longest one ends. The log-prob of every sampled token is recorded at the moment it is drawn, so PPO needs no
extra forward for the "old" log-probs of the sampling policy (it still recomputes them for training; the gap
is logged, docs/ppo.md item 19). docs/ROLLOUT.md describes the engine interface around this.
"""

from __future__ import annotations

import torch
from torch import nn

from prefloop.models.heads import position_ids

from . import decoding
from .continuous import sample_slots
from .decoding import (
    SampleOutput,
    SamplingConfig,
    _check_config,
    _finish,
    _make_cache,
    _next_token,
    _PreallocatedLayer,
)
from .forward import accepts_logits_to_keep, cache_kwarg

__all__ = ["SampleOutput", "SamplingConfig", "sample", "supports_slots", "uniforms"]


def uniforms(cfg: SamplingConfig, batch: int, generator: torch.Generator | None, device) -> torch.Tensor | None:
    """The random draws of a rollout, (B, R): row i's token at step t inverts its CDF at u[i, t].

    Indexing the draws by (prompt, step) makes a sample independent of how the rows are batched: in chunks,
    in continuous-batching slots (`continuous.py`) or all at once, the same seed gives the same tokens. They
    come from the generator's own device (a CPU generator cannot draw on a GPU) in one call, then move once.
    None when greedy (no draws).
    """
    if cfg.greedy:
        return None
    gen_device = generator.device if generator is not None else device
    return torch.rand(batch, cfg.max_new_tokens, generator=generator, device=gen_device).to(device)


@torch.no_grad()
def sample(
    model: nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    micro_batch_size: int | None = None,
    continuous: bool = True,
) -> SampleOutput:
    """Sample one response per prompt. `query_ids`, `query_mask`: (B, P), left padded.

    `micro_batch_size` bounds the rows decoded together (the KV cache holds that many). With `continuous`
    (and a model whose layers all use full attention) they are slots: a row that ends leaves the batch and
    the next waiting prompt takes its place (`continuous.py`); otherwise the rows go in consecutive chunks,
    each decoded until its longest row ends. Either way the samples depend only on `generator`'s seed, not on
    `micro_batch_size` or the path (the draws are indexed by prompt and step, see `uniforms`), up to the
    float rounding of different batch shapes.
    """
    _check_config(cfg)
    B = query_ids.shape[0]
    if B and not bool(query_mask[:, -1].all()):
        raise ValueError("prompts must be left padded: query_mask[:, -1] must be 1 in every row")
    u = uniforms(cfg, B, generator, query_ids.device)
    size = micro_batch_size if micro_batch_size and micro_batch_size < B else max(B, 1)
    if continuous and B and supports_slots(model):
        return sample_slots(model, query_ids, query_mask, cfg, u, slots=size)
    parts = [_sample_batch(model, query_ids[i:i + size], query_mask[i:i + size], cfg,
                           None if u is None else u[i:i + size]) for i in range(0, B, size)]
    return parts[0] if len(parts) == 1 else _join(parts, cfg.pad_token_id)


def supports_slots(model: nn.Module) -> bool:
    """Whether the model's cache can be the slot cache of continuous batching: every layer plain full
    attention (sliding-window and other layer kinds keep their own cache and the rectangular path)."""
    layers = _make_cache(model, 1).layers
    return bool(layers) and all(isinstance(layer, _PreallocatedLayer) for layer in layers)


def _join(parts: list[SampleOutput], pad_token_id: int) -> SampleOutput:
    """Chunks of one batch as one SampleOutput: responses right-padded (pad id, mask 0, log-prob 0) to the
    longest chunk's length (in stop-at-EOS mode chunks end at different steps)."""
    R = max(p.response_ids.shape[1] for p in parts)

    def right_pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, R - x.shape[1]), value=value)

    return SampleOutput(
        torch.cat([p.query_ids for p in parts]), torch.cat([p.query_mask for p in parts]),
        torch.cat([right_pad(p.response_ids, pad_token_id) for p in parts]),
        torch.cat([right_pad(p.response_mask, 0) for p in parts]),
        torch.cat([right_pad(p.logprobs, 0.0) for p in parts]), torch.cat([p.ended for p in parts]))


def _sample_batch(
    model: nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    cfg: SamplingConfig,
    u: torch.Tensor | None,
) -> SampleOutput:
    """`sample` on one batch, rectangular: all rows share one KV cache and decode until the last one ends.

    Prefill the prompts with position ids from the mask (docs/ppo.md item 2), then decode one token per step
    from the KV cache, each new token at position previous + 1. The model's train/eval mode is the
    caller's (eval for rollouts: dropout off, docs/ppo.md item 12). `u`: (B, R) uniforms (`uniforms`).
    """
    B, P = query_ids.shape
    R = cfg.max_new_tokens
    device = query_ids.device
    end_id = cfg.end_token_id
    check_every = decoding._check_every(device)

    # Mask over prompt + every response slot: response columns stay 1 (rows that ended attend to their
    # pads, harmless since their outputs are discarded), and each step passes a view of the first columns.
    full_mask = torch.ones(B, P + R, dtype=torch.long, device=device)
    full_mask[:, :P] = query_mask
    positions = position_ids(query_mask)
    step_positions = positions[:, -1:] + torch.arange(1, R + 1, device=device)  # (B, R)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache_name = cache_kwarg(model)

    response_ids = torch.full((B, R), cfg.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, R, dtype=torch.float32, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = _make_cache(model, P + R)

    out = model(
        input_ids=query_ids,
        attention_mask=full_mask[:, :P],
        position_ids=positions,
        use_cache=True,
        **{cache_name: cache},
        **keep,
    )
    steps = R
    for t in range(R):
        token, lp = _next_token(out.logits[:, -1], cfg, None if u is None else u[:, t])
        if end_id is not None:
            token = token.masked_fill(done, cfg.pad_token_id)
            lp = lp.masked_fill(done, 0.0)
            done |= token == end_id
        response_ids[:, t] = token
        logprobs[:, t] = lp
        if t == R - 1 or (cfg.early_stop and (t + 1) % check_every == 0 and bool(done.all())):
            steps = t + 1
            break
        out = model(
            input_ids=token.unsqueeze(-1),
            attention_mask=full_mask[:, : P + t + 1],
            position_ids=step_positions[:, t : t + 1],
            use_cache=True,
            # The cache object is updated in place by every forward; passing our own reference (not the
            # output's field, renamed from `past_key_values` to `cache` in transformers 5) works on both APIs.
            **{cache_name: cache},
            **keep,
        )

    return _finish(query_ids, query_mask, response_ids[:, :steps], logprobs[:, :steps], cfg)
