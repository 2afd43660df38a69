"""Rollouts sampled in micro-batches (`sample(..., micro_batch_size=)`): one KV cache per chunk, the
chunks joined as one batch."""

from __future__ import annotations

import torch
from torch import nn

from prefloop.rollout import sample

from .test_rollout_forward import tiny_model
from .test_rollout_sampler import EOS, PAD, cfg, left_padded


def _sample(model, ids, mask, config, seed=0, micro=None):
    return sample(model, ids, mask, config, generator=torch.Generator().manual_seed(seed), micro_batch_size=micro)


class EndsSingleRows(nn.Module):
    """Forces EOS at every decode step of a batch of one row, so that such a chunk ends at its second token
    while the others run on."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        if kwargs["input_ids"].shape == (1, 1):
            out.logits[:, -1] = -1e4
            out.logits[:, -1, EOS] = 1e4
        return out


def test_greedy_chunks_equal_one_batch():
    model = tiny_model("llama")
    ids, mask = left_padded([3, 7, 5, 1, 6])
    whole = _sample(model, ids, mask, cfg(greedy=True))
    chunked = _sample(model, ids, mask, cfg(greedy=True), micro=2)
    assert torch.equal(chunked.response_ids, whole.response_ids)
    assert torch.equal(chunked.response_mask, whole.response_mask)
    assert torch.equal(chunked.ended, whole.ended)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, atol=1e-5, rtol=1e-5)


def test_each_chunk_is_a_sample_of_its_rows_alone():
    """The draws are indexed by (prompt, step) and drawn row after row, so chunk k gets the samples of sampling
    its rows alone with the generator as the rows before it left it. Responses of different lengths are
    right-padded to the longest."""
    model = EndsSingleRows(tiny_model("llama"))
    ids, mask = left_padded([3, 7, 5, 1, 6], seed=4)
    config = cfg(max_new_tokens=10, temperature=1.5)
    chunked = _sample(model, ids, mask, config, seed=7, micro=2)
    gen = torch.Generator().manual_seed(7)
    parts = [sample(model, ids[s], mask[s], config, generator=gen) for s in (slice(0, 2), slice(2, 4), slice(4, 5))]
    R = chunked.response_ids.shape[1]
    assert R == max(p.response_ids.shape[1] for p in parts)
    assert any(p.response_ids.shape[1] < R for p in parts)  # the join had padding to add
    for s, p in zip((slice(0, 2), slice(2, 4), slice(4, 5)), parts):
        r = p.response_ids.shape[1]
        assert torch.equal(chunked.response_ids[s, :r], p.response_ids)
        assert torch.equal(chunked.response_mask[s, :r], p.response_mask)
        assert torch.equal(chunked.logprobs[s, :r], p.logprobs)
        assert torch.equal(chunked.ended[s], p.ended)
        # the padding a shorter chunk gets: pad tokens, masked out, log-prob 0
        assert (chunked.response_ids[s, r:] == PAD).all() and (chunked.response_mask[s, r:] == 0).all()
        assert (chunked.logprobs[s, r:] == 0).all()
    assert torch.equal(chunked.response_lengths, torch.cat([p.response_lengths for p in parts]))
    assert torch.equal(chunked.query_ids, ids) and EOS != PAD


def test_a_chunk_as_large_as_the_batch_changes_nothing():
    model = tiny_model("llama")
    ids, mask = left_padded([3, 7, 5, 1])
    whole = _sample(model, ids, mask, cfg(), seed=3)
    same = _sample(model, ids, mask, cfg(), seed=3, micro=4)
    assert torch.equal(same.response_ids, whole.response_ids) and torch.equal(same.logprobs, whole.logprobs)


def test_sampled_chunks_equal_one_batch():
    """Not only greedy: the draws do not depend on the chunking (rectangular path, whose chunks are real)."""
    model = tiny_model("gpt2")
    ids, mask = left_padded([3, 7, 5, 1, 6])
    config = cfg(temperature=1.5)
    whole = sample(model, ids, mask, config, generator=torch.Generator().manual_seed(2), continuous=False)
    chunked = sample(model, ids, mask, config, generator=torch.Generator().manual_seed(2), micro_batch_size=2,
                     continuous=False)
    assert torch.equal(chunked.response_ids, whole.response_ids)
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, atol=1e-5, rtol=0)
