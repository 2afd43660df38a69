"""Continuous batching: a fixed number of slots decode together, and a row that ends gives its slot to the
next waiting prompt.

The rectangular sampler decodes every row until the longest one ends; with responses of varied length most of
its late steps compute rows that are already finished. Here finished rows leave the batch and waiting prompts
join it, so each decode step computes live rows only and the KV cache never holds more than `slots` rows.

Layout. All rows share the cache's columns: a decode step writes one column for every live row. When rows
leave or join, the cache is rebuilt with the rows that stay (their columns, trimmed of the leading ones none
of them attends to) and the prefilled new prompts, all right-aligned at the same column; the attention mask
hides, per row, the columns that are not its own. Position ids come from each row's own prompt, so where a
row's keys sit in the cache changes nothing (RoPE and learned positions are applied before caching).

Rebuilding copies the cache, so it happens only once a quarter of the live rows have ended (`REBUILD_FRACTION`),
not at every end: between rebuilds finished rows still take a place in the batch (their outputs discarded).
Token t of prompt i inverts its CDF at u[i, t] (`sampler.uniforms`), so which slot a prompt lands in, and
when, does not change its sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prefloop.models.heads import position_ids

from . import decoding
from .decoding import SampleOutput, SamplingConfig, _finish, _make_cache, _next_token
from .forward import accepts_logits_to_keep, cache_kwarg

__all__ = ["REBUILD_FRACTION", "sample_slots"]

REBUILD_FRACTION = 0.25
"""Rebuild the batch once this fraction of its rows has ended (or all have). Lower: fewer wasted row-steps,
more cache copies; a copy costs about one decode step's memory traffic."""


@dataclass
class _Live:
    """The rows decoding now, one per slot, in cache order."""

    idx: torch.Tensor  # (n,) long, prompt index of each row
    step: torch.Tensor  # (n,) long, tokens sampled so far
    pos: torch.Tensor  # (n,) long, position id of `token` (before the first draw: of the last prompt token)
    token: torch.Tensor  # (n,) long, the last sampled token (the next input)
    done: torch.Tensor  # (n,) bool, ended (end token or max_new_tokens)
    mask: torch.Tensor  # (n, C) long, which cache columns each row attends to (1 for every future column)
    length: int  # cache columns filled


@dataclass
class _Outputs:
    """What the rows sampled, by prompt. Row B and column R are scratch, written by rows that have ended."""

    ids: torch.Tensor  # (B + 1, R + 1) long, pad where nothing was sampled
    logprobs: torch.Tensor  # (B + 1, R + 1) fp32, 0 where nothing was sampled

    def record(self, idx: torch.Tensor, step: torch.Tensor, done: torch.Tensor, token, lp) -> None:
        B, R = self.ids.shape[0] - 1, self.ids.shape[1] - 1
        # Index arithmetic instead of a boolean selection: no host sync on an accelerator.
        rows, cols = torch.where(done, B, idx), torch.where(done, R, step)
        self.ids[rows, cols] = token
        self.logprobs[rows, cols] = lp


class _Slots:
    """One continuous-batching rollout: the model, its prompts, their draws and the shared cache."""

    def __init__(self, model, query_ids, query_mask, cfg: SamplingConfig, u, slots: int):
        self.model, self.query_ids, self.query_mask, self.cfg, self.u, self.slots = (
            model, query_ids, query_mask, cfg, u, slots)
        B, R = query_ids.shape[0], cfg.max_new_tokens
        self.lengths = query_mask.sum(-1).tolist()
        self.waiting = 0  # the next prompt to join
        self.cache = _make_cache(model, 1)
        self.keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.cache_name = cache_kwarg(model)
        self.check_every = decoding._check_every(query_ids.device)
        # Cache columns a row may need after it joins: every row ends within max_new_tokens steps of joining,
        # and the look for ended rows comes at most check_every steps later.
        self.extra = cfg.max_new_tokens + self.check_every
        self.out = _Outputs(torch.full((B + 1, R + 1), cfg.pad_token_id, dtype=torch.long, device=query_ids.device),
                            torch.zeros(B + 1, R + 1, dtype=torch.float32, device=query_ids.device))

    def _sampled(self, live: _Live, logits: torch.Tensor) -> None:
        """Draw each row's next token from its (n, V) logits, record it, advance the row."""
        R, end_id = self.cfg.max_new_tokens, self.cfg.end_token_id
        u = None if self.u is None else self.u[live.idx, live.step.clamp(max=R - 1)]
        token, lp = _next_token(logits, self.cfg, u)
        self.out.record(live.idx, live.step, live.done, token, lp)
        live.step = live.step + (~live.done).long()
        ended = live.step >= R
        if end_id is not None:
            ended |= token == end_id
        live.done = live.done | ended
        live.token, live.pos = token, live.pos + 1

    def decode(self, live: _Live) -> None:
        """One token for every live row."""
        L = live.length
        out = self.model(input_ids=live.token.unsqueeze(-1), attention_mask=live.mask[:, :L + 1],
                         position_ids=live.pos.unsqueeze(-1), use_cache=True, **{self.cache_name: self.cache},
                         **self.keep)
        live.length = L + 1
        self._sampled(live, out.logits[:, -1])

    def prefill(self, count: int) -> tuple[_Live, list]:
        """Prompts `waiting .. waiting + count`, left padded to their own longest, through the model: their rows
        (first token sampled) and their cache (one (keys, values) pair per layer)."""
        sl = slice(self.waiting, self.waiting + count)
        P = max(self.lengths[sl])
        ids, mask = self.query_ids[sl, -P:], self.query_mask[sl, -P:]
        # Room for the decode steps too: when these rows are the whole batch, the cache is used as it is.
        cache = _make_cache(self.model, P + self.extra)
        pos = position_ids(mask)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self.cache_name: cache}, **self.keep)
        n = ids.shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=ids.device)
        live = _Live(torch.arange(sl.start, sl.stop, device=ids.device), zeros, pos[:, -1], zeros,
                     torch.zeros(n, dtype=torch.bool, device=ids.device), mask, P)
        self._sampled(live, out.logits[:, -1])
        self.waiting += count
        return live, [(layer._keys, layer._values) for layer in cache.layers]

    def rebuild(self, live: _Live | None) -> _Live | None:
        """Drop the rows that ended, fill the free slots with waiting prompts; None when nothing is left."""
        if live is not None:
            stay = (~live.done).nonzero().squeeze(-1)
            live, lo = _select(live, stay)
            kv = [(layer.keys[stay, :, lo:], layer.values[stay, :, lo:]) for layer in self.cache.layers]
        free = self.slots - (0 if live is None else live.idx.shape[0])
        count = min(free, len(self.lengths) - self.waiting)
        if count:
            joined, joined_kv = self.prefill(count)
            if live is None or live.idx.shape[0] == 0:
                live, kv = joined, joined_kv
            else:
                live, kv = _merge(live, kv, joined, joined_kv)
        if live is None or live.idx.shape[0] == 0:
            return None
        _install(self.cache, live, kv, self.extra)
        return live


def _select(live: _Live, rows: torch.Tensor) -> tuple[_Live, int]:
    """The rows `rows` of `live`, with the leading cache columns none of them attends to cut off, and the
    number of columns cut."""
    mask = live.mask[rows, :live.length]
    lo = int(mask.any(0).long().argmax()) if rows.numel() else live.length
    return _Live(live.idx[rows], live.step[rows], live.pos[rows], live.token[rows], live.done[rows],
                 mask[:, lo:], live.length - lo), lo


def _merge(a: _Live, a_kv: list, b: _Live, b_kv: list) -> tuple[_Live, list]:
    """Two groups of rows in one cache, both right-aligned at column max(length_a, length_b)."""
    W = max(a.length, b.length)

    def left_pad(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
        pad = [0, 0] * (x.dim() - 1 - dim) + [W - length, 0]
        return torch.nn.functional.pad(x, pad)  # zeros: finite keys, masked out

    kv = [(torch.cat([left_pad(ka[:, :, :a.length], a.length, 2), left_pad(kb[:, :, :b.length], b.length, 2)]),
           torch.cat([left_pad(va[:, :, :a.length], a.length, 2), left_pad(vb[:, :, :b.length], b.length, 2)]))
          for (ka, va), (kb, vb) in zip(a_kv, b_kv)]
    live = _Live(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in ("idx", "step", "pos", "token", "done")),
                 torch.cat([left_pad(a.mask[:, :a.length], a.length, 1), left_pad(b.mask, b.length, 1)]), W)
    return live, kv


def _install(cache, live: _Live, kv: list, extra: int) -> None:
    """Give the cache buffers with room for `extra` more columns (`_Slots.extra`), and extend the mask over
    them (each future column holds the row's own next token). `kv`: (keys, values) per layer, (n, H, >= L, D),
    the first L columns filled; buffers that already have the room are used as they are."""
    L = live.length
    for layer, (k, v) in zip(cache.layers, kv):
        if k.shape[2] < L + extra:
            keys = k.new_empty(k.shape[0], k.shape[1], L + extra, k.shape[3])
            values = v.new_empty(v.shape[0], v.shape[1], L + extra, v.shape[3])
            keys[:, :, :L], values[:, :, :L] = k[:, :, :L], v[:, :, :L]
            k, v = keys, values
        layer.install(k, v, L)
    live.mask = torch.cat([live.mask[:, :L], live.mask.new_ones(live.mask.shape[0], extra)], dim=1)


def _should_rebuild(live: _Live) -> bool:
    n_done, n = int(live.done.sum()), live.done.shape[0]
    return n_done == n or n_done >= max(1.0, REBUILD_FRACTION * n)


@torch.no_grad()
def sample_slots(model: nn.Module, query_ids: torch.Tensor, query_mask: torch.Tensor, cfg: SamplingConfig,
                 u: torch.Tensor | None, slots: int) -> SampleOutput:
    """`sampler.sample` by continuous batching over `slots` rows; `u`: (B, R) uniforms (`sampler.uniforms`).
    The model must support slots (`sampler.supports_slots`)."""
    run = _Slots(model, query_ids, query_mask, cfg, u, slots)
    live, t = run.rebuild(None), 0
    while live is not None:
        run.decode(live)
        t += 1
        if t % run.check_every == 0 and _should_rebuild(live):
            live = run.rebuild(live)
    B, R = query_ids.shape[0], cfg.max_new_tokens
    return _finish(query_ids, query_mask, run.out.ids[:B, :R], run.out.logprobs[:B, :R], cfg)
