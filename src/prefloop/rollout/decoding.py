"""The pieces both sampling paths share: the sampling options and output, the KV cache that writes in place,
one token's draw and log-prob, and the masks of the finished responses (docs/ppo.md items 1-6).

`sampler.py` (the public `sample`, and the rectangular path) and `continuous.py` (continuous batching) are
built from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["SampleOutput", "SamplingConfig"]


@dataclass
class SamplingConfig:
    """How to sample responses. Defaults follow docs/ppo.md item 3: plain samples of the policy."""

    max_new_tokens: int
    """Response length cap R (the exact length in fixed-length modes)."""
    eos_token_id: int
    """End-of-sequence token; kept in the response and in `response_mask`."""
    pad_token_id: int
    """Written after the end of a response. Must differ from EOS (docs/ppo.md item 1). It is not excluded
    from sampling: a policy that samples it gets an ordinary (unmasked) token."""
    temperature: float = 1.0
    """Logits are divided by this before sampling and before the log-probs (docs/ppo.md item 5)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to >= top_p. 1 = off."""
    top_k: int = 0
    """Keep only the k most likely tokens. 0 = off."""
    stop_at_eos: bool = True
    """End a response at its first EOS and stop once every row has ended. False (and no truncation
    token): sample exactly `max_new_tokens` and treat EOS as an ordinary token."""
    truncate_token_id: int | None = None
    """Fixed-length mode (docs/ppo.md item 4): sample exactly `max_new_tokens`, then mask everything after the
    first occurrence of this token. Takes precedence over `stop_at_eos`."""
    greedy: bool = False
    """Take the argmax instead of sampling (evaluation; never for RL rollouts)."""

    @property
    def end_token_id(self) -> int | None:
        """The token that ends a response, or None when responses never end early."""
        if self.truncate_token_id is not None:
            return self.truncate_token_id
        return self.eos_token_id if self.stop_at_eos else None

    @property
    def early_stop(self) -> bool:
        """Whether the loop may stop before `max_new_tokens` (only in stop-at-EOS mode)."""
        return self.truncate_token_id is None and self.stop_at_eos


@dataclass
class SampleOutput:
    """Sampled responses for a batch of B prompts.

    R is `max_new_tokens` in the fixed-length modes; in stop-at-EOS mode the batch is trimmed to its
    longest response. `logprobs` are log softmax(logits / T) of the sampled tokens: the policy's own
    tempered distribution, taken BEFORE top-k/top-p truncation (what PPO's ratio and KL need; with the RL
    defaults top_k=0, top_p=1 it is also the distribution sampled from). Recomputing them with
    `response_logprobs` at the same temperature gives the same values (docs/ppo.md item 19).
    """

    query_ids: torch.Tensor  # (B, P) long, left padded
    query_mask: torch.Tensor  # (B, P) 1 for prompt tokens, 0 for left pads
    response_ids: torch.Tensor  # (B, R) long, pad after the end token
    response_mask: torch.Tensor  # (B, R) long, 1 up to and including the end token, 0 after
    logprobs: torch.Tensor  # (B, R) fp32 log softmax(logits / T)[a_t] (before top-k/top-p), 0 at pads
    ended: torch.Tensor  # (B,) bool, the row produced its end token (EOS or truncation token); all
    # False when responses have no end token (stop_at_eos=False without a truncation token)

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) number of real response tokens, the end token included."""
        return self.response_mask.sum(-1)


def _check_config(cfg: SamplingConfig) -> None:
    if cfg.pad_token_id == cfg.eos_token_id:
        raise ValueError(
            f"pad_token_id == eos_token_id == {cfg.eos_token_id}: pad must be a distinct token, otherwise "
            "EOS is masked out of training and the policy never learns to stop (docs/ppo.md item 1); "
            "see prefloop.models.ensure_pad_token"
        )
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {cfg.temperature}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {cfg.top_k}")


class _PreallocatedLayer(DynamicLayer):
    """A KV cache layer that writes into buffers sized for the whole rollout and returns views.

    DynamicLayer concatenates (copies the whole cache) at every step; a StaticLayer attends over its
    full length from the first step. This does neither: O(1) writes, attention over filled slots only.
    """

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        B, H, _, Dk = key_states.shape
        self._keys = key_states.new_empty(B, H, self.max_len, Dk)
        self._values = value_states.new_empty(B, H, self.max_len, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self.max_len:  # a slice past the end would silently take nothing
            raise RuntimeError(f"KV cache overflow: {end} columns in a cache of {self.max_len}")
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.length = end
        self.keys = self._keys[:, :, :end]
        self.values = self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def install(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take over buffers (B, H, C, D) whose first `length` columns are filled (continuous batching
        rebuilds the cache when rows leave and join)."""
        self._keys, self._values, self.length, self.max_len = keys, values, length, keys.shape[-2]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]


def _make_cache(model: nn.Module, max_len: int) -> Cache:
    """A preallocated cache where every layer is plain full attention, else the model's DynamicCache
    (sliding-window and other layer kinds keep their own logic)."""
    config = getattr(model, "config", None)
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    if config is None or not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return cache
    return Cache(layers=[_PreallocatedLayer(max_len) for _ in cache.layers])


def _truncate(weights: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Zero the weights outside the top-k, then outside the nucleus of what is left (B, V) -> (B, V).

    `weights` are unnormalised probabilities. Nucleus (Holtzman et al. 2020): keep the smallest set of
    most likely tokens whose probability sums to >= top_p; the most likely token always survives.
    """
    if 0 < top_k < weights.shape[-1]:
        kth = torch.topk(weights, top_k, dim=-1).values[:, -1:]
        weights = weights.masked_fill(weights < kth, 0.0)
    if top_p < 1.0:
        sorted_w, order = torch.sort(weights, dim=-1, descending=True)
        # Mass strictly above each token; drop it once that already reaches top_p (never the first).
        above = sorted_w.cumsum(dim=-1) - sorted_w
        drop_sorted = above >= top_p * sorted_w.sum(dim=-1, keepdim=True)
        drop_sorted[:, 0] = False
        weights = weights.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    return weights


def _invert_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One categorical draw per row by inverting the CDF: (B, V) cumulative weights, (B,) uniforms -> (B,) ids.

    Same distribution as `torch.multinomial(weights, 1)`, at a fraction of the cost: multinomial draws V
    exponentials per row (measured at ~35% of a decode step for the tiny model, V = 8192); this takes one
    uniform per row and one cumsum. Token i gets the mass cdf[i] - cdf[i-1] exactly as computed, so
    fp32 rounding moves a token's probability by at most half an ulp of its cdf (relative to the total:
    <= 6e-8), the order of multinomial's own fp32 exponentials. Zero-weight tokens are never drawn.
    """
    # First index whose cdf exceeds u * total; the clamp only guards u * total rounding up to total.
    token = torch.searchsorted(cdf, u.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:], right=True)
    return token.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def _draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, V) unnormalised probabilities, (B,) uniforms in [0, 1) -> (B,) token ids (`_invert_cdf`)."""
    return _invert_cdf(weights.cumsum(dim=-1), u)


def _next_token(
    logits: torch.Tensor, cfg: SamplingConfig, u: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: (B, V) logits and (B,) uniforms -> token (B,) and its log-prob (B,) under softmax(logits / T).

    The log-prob is that of the full tempered distribution (the policy's own, which PPO's ratio needs),
    not of the top-k/top-p distribution actually sampled from; with the RL defaults the two coincide.
    `u` may be None only when greedy.
    """
    scaled = logits.float()
    if cfg.temperature != 1.0:
        scaled = scaled / cfg.temperature
    # exp(z - max) serves as the sampling weights and, summed, as the normaliser of the log-probs:
    # log p = z - max - log(sum exp(z - max)), one pass over the vocabulary instead of log_softmax + exp.
    zmax = scaled.amax(dim=-1, keepdim=True)
    weights = (scaled - zmax).exp_()
    if cfg.greedy or cfg.top_k > 0 or cfg.top_p < 1.0:
        log_total = weights.sum(dim=-1, keepdim=True).log_()
        token = scaled.argmax(dim=-1) if cfg.greedy else _draw(_truncate(weights, cfg.top_k, cfg.top_p), u)
    else:
        # Plain sampling: the cdf's last entry is the normaliser, which saves a pass over the vocabulary
        # (it differs from sum() by rounding only: ~1e-7 in the log-prob for V = 8192).
        cdf = weights.cumsum(dim=-1)
        log_total = cdf[:, -1:].log()
        token = _invert_cdf(cdf, u)
    logprob = scaled.gather(-1, token.unsqueeze(-1)) - zmax - log_total
    return token, logprob.squeeze(-1)


def _check_every(device: torch.device) -> int:
    """How often (in steps) the loop asks whether every row has ended. On an accelerator each check is
    a host sync that drains the queue of kernels, so every few steps; on CPU it is free, so every step."""
    return 1 if device.type == "cpu" else 8


def _finish(
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    logprobs: torch.Tensor,
    cfg: SamplingConfig,
) -> SampleOutput:
    """Response mask and `ended` from the end token; trim trailing all-pad columns in stop-at-EOS mode."""
    end_id = cfg.end_token_id
    if end_id is None:
        response_mask = torch.ones_like(response_ids)
        ended = torch.zeros(response_ids.shape[0], dtype=torch.bool, device=response_ids.device)
    else:
        is_end = (response_ids == end_id).long()
        response_mask = ((is_end.cumsum(-1) - is_end) == 0).long()  # no end token strictly before t
        ended = is_end.any(-1)
    if cfg.early_stop and response_ids.shape[0]:
        # The all-ended check may run every few steps, leaving columns where every row is pad.
        longest = int(response_mask.sum(-1).max())
        response_ids, response_mask, logprobs = (
            x[:, :longest].contiguous() for x in (response_ids, response_mask, logprobs)
        )
    return SampleOutput(query_ids, query_mask, response_ids, response_mask, logprobs, ended)
