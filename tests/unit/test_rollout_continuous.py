"""Continuous batching (`rollout/continuous.py`): rows that end leave the batch, waiting prompts take their
slots, and the samples are those of the rectangular path for the same seed, whatever the number of slots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prefloop.rollout import continuous, decoding, response_logprobs, sample, sampler

from .test_rollout_forward import VOCAB, tiny_model
from .test_rollout_sampler import EOS, PAD, cfg, left_padded

# Prompt lengths with a long one among short ones, and one that joins late (slot counts below 6).
LENGTHS = [3, 7, 2, 5, 1, 14, 4, 6, 2, 9, 3, 5]


def ends_often(kind: str) -> nn.Module:
    """A tiny model with a bias towards EOS (P(EOS) ~ 1/5 at the first step), so responses end at many
    different steps, some never."""
    model = tiny_model(kind)
    old = model.get_output_embeddings()
    head = nn.Linear(old.in_features, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[EOS] = 3.2
    model.set_output_embeddings(head)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return ends_often(request.param)


def draw(model, ids, mask, config, slots=None, continuous_=True, seed=0):
    return sample(model, ids, mask, config, generator=torch.Generator().manual_seed(seed),
                  micro_batch_size=slots, continuous=continuous_)


def assert_same(a, b):
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.ended, b.ended)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


@pytest.fixture
def prefills(monkeypatch):
    """Counts the prefill forwards of continuous batching (one per group of prompts that joins)."""
    calls = []
    original = continuous._Slots.prefill

    def counted(self, count):
        calls.append(count)
        return original(self, count)

    monkeypatch.setattr(continuous._Slots, "prefill", counted)
    return calls


@pytest.mark.parametrize("slots", [None, 4, 1])
def test_same_samples_as_the_rectangular_path(model, slots, prefills):
    ids, mask = left_padded(LENGTHS)
    config = cfg(max_new_tokens=10, temperature=1.3)
    rect = draw(model, ids, mask, config, continuous_=False)
    cont = draw(model, ids, mask, config, slots=slots)
    assert_same(cont, rect)
    lengths = rect.response_lengths
    assert lengths.min() < 5 and lengths.max() == 10 and rect.ended.any() and not rect.ended.all()  # varied
    if slots:
        assert len(prefills) > 2 and max(prefills) <= slots  # prompts joined as slots freed, never more rows
        assert slots == 1 or prefills[1] < slots  # a refill of the slots freed, not a whole new batch


def test_replies_do_not_depend_on_the_number_of_slots(model):
    ids, mask = left_padded(LENGTHS, seed=3)
    config = cfg(max_new_tokens=8)
    outs = [draw(model, ids, mask, config, slots=s, seed=5) for s in (1, 2, 5, 12)]
    for other in outs[1:]:
        assert_same(other, outs[0])


@pytest.mark.parametrize("fraction", [0.01, 1.0])
def test_when_the_batch_is_rebuilt_changes_no_sample(model, monkeypatch, fraction):
    """0.01: rebuilt at every end; 1.0: only once every row has ended."""
    ids, mask = left_padded(LENGTHS, seed=1)
    config = cfg(max_new_tokens=9)
    default = draw(model, ids, mask, config, slots=4)
    monkeypatch.setattr(continuous, "REBUILD_FRACTION", fraction)
    assert_same(draw(model, ids, mask, config, slots=4), default)


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_accelerator_check_interval_changes_no_sample(model, monkeypatch, stop_at_eos):
    """On an accelerator ended rows are looked for every 8 steps; the cache must hold those extra steps
    (one slot decoding 11 tokens without an early end runs 16 steps before the next look)."""
    ids, mask = left_padded(LENGTHS[:6], seed=2)
    config = cfg(max_new_tokens=11, stop_at_eos=stop_at_eos)
    every_step = [draw(model, ids, mask, config, slots=s) for s in (1, 3)]
    monkeypatch.setattr(decoding, "_check_every", lambda device: 8)
    for s, expected in zip((1, 3), every_step):
        assert_same(draw(model, ids, mask, config, slots=s), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_equal_a_full_forward_of_the_finished_sequences(model, temperature):
    ids, mask = left_padded(LENGTHS, seed=4)
    out = draw(model, ids, mask, cfg(max_new_tokens=10, temperature=temperature), slots=3)
    full = response_logprobs(model, out.query_ids, out.query_mask, out.response_ids, out.response_mask,
                             temperature)
    torch.testing.assert_close(out.logprobs, full, atol=1e-4, rtol=0)
    assert torch.all(out.logprobs[out.response_mask == 0] == 0) and torch.all(out.logprobs[out.response_mask == 1] < 0)


def test_rows_stop_at_their_first_eos_with_masks_after_it(model):
    ids, mask = left_padded(LENGTHS, seed=6)
    R = 6
    out = draw(model, ids, mask, cfg(max_new_tokens=R), slots=3)
    assert out.response_ids.shape[1] == int(out.response_lengths.max())  # trimmed to the longest
    for row, ended, ln in zip(out.response_ids.tolist(), out.ended.tolist(), out.response_lengths.tolist()):
        if ended:  # EOS is the last real token, pad after it, no EOS before it
            assert row[ln - 1] == EOS and EOS not in row[:ln - 1] and set(row[ln:]) <= {PAD}
        else:  # cut off at max_new_tokens without an EOS
            assert ln == R and EOS not in row
    assert out.ended.sum() >= 3 and (~out.ended).sum() >= 1
    columns = torch.arange(out.response_ids.shape[1])
    assert torch.equal(out.response_mask, (columns < out.response_lengths[:, None]).long())


@pytest.mark.parametrize("mode", [{"stop_at_eos": False}, {"truncate_token_id": 7}, {"greedy": True},
                                  {"top_k": 5, "top_p": 0.8}, {"max_new_tokens": 1}])
def test_other_modes_match_the_rectangular_path(model, mode):
    ids, mask = left_padded(LENGTHS, seed=7)
    config = cfg(**{"max_new_tokens": 7, **mode})
    cont = draw(model, ids, mask, config, slots=3)
    assert_same(cont, draw(model, ids, mask, config, continuous_=False))
    if "stop_at_eos" in mode or "truncate_token_id" in mode:
        assert cont.response_ids.shape[1] == 7  # fixed length: every row decodes to max_new_tokens
    if mode.get("max_new_tokens") == 1:
        assert cont.response_ids.shape[1] == 1


def test_wrappers_without_a_config_take_the_rectangular_path():
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    inner = ends_often("llama")
    assert sampler.supports_slots(inner) and not sampler.supports_slots(Wrapped(inner))
    ids, mask = left_padded(LENGTHS[:5])
    assert_same(draw(Wrapped(inner), ids, mask, cfg(), slots=2), draw(inner, ids, mask, cfg(), slots=2))
