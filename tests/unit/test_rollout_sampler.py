"""The batched KV-cache sampler: its log-probs, padding, ends of responses, truncation and sampling knobs."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from prefloop.rollout import SampleOutput, SamplingConfig, decoding, response_logprobs, sample
from prefloop.rollout.decoding import _draw, _make_cache, _next_token, _PreallocatedLayer, _truncate

from .test_rollout_forward import VOCAB, tiny_model

PAD, EOS = 0, 2


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny_model(request.param)


def left_padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    P = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), P), generator=g)
    mask = (torch.arange(P)[None] >= P - torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def cfg(**kw) -> SamplingConfig:
    return SamplingConfig(**{"max_new_tokens": 12, "eos_token_id": EOS, "pad_token_id": PAD, **kw})


def run(model, ids, mask, config, seed=0) -> SampleOutput:
    return sample(model, ids, mask, config, generator=torch.Generator().manual_seed(seed))


class ForceTokens(nn.Module):
    """Wraps a model and forces `token` at decode step `step` in row `row` (entries (row, step, token));
    rows in `never_end` never sample EOS."""

    def __init__(self, inner: nn.Module, forced: list[tuple[int, int, int]], never_end: tuple[int, ...] = ()):
        super().__init__()
        self.inner, self.forced, self.never_end, self.calls = inner, forced, list(never_end), 0

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[self.never_end, -1, EOS] = -1e4
        for row, step, token in self.forced:
            if step == self.calls:
                out.logits[row, -1] = -1e4
                out.logits[row, -1, token] = 1e4
        self.calls += 1
        return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_full_forward_recompute(model, temperature):
    ids, mask = left_padded([3, 7, 5, 1])
    out = run(model, ids, mask, cfg(temperature=temperature, max_new_tokens=10))
    recomputed = response_logprobs(
        model, out.query_ids, out.query_mask, out.response_ids, out.response_mask, temperature
    )
    torch.testing.assert_close(out.logprobs, recomputed, atol=1e-4, rtol=0)
    assert torch.all(out.logprobs[out.response_mask == 0] == 0)
    assert torch.all(out.logprobs[out.response_mask == 1] < 0)


def test_left_padding_is_invisible_to_greedy_sampling(model):
    ids, mask = left_padded([4, 9, 6])
    batch = run(model, ids, mask, cfg(greedy=True))
    alone = run(model, ids[:1, -4:], mask[:1, -4:], cfg(greedy=True))
    n = alone.response_ids.shape[1]
    assert torch.equal(batch.response_ids[0, :n], alone.response_ids[0])
    torch.testing.assert_close(batch.logprobs[0, :n], alone.logprobs[0], atol=1e-5, rtol=0)


def test_greedy_equals_hf_generate(model):
    ids, mask = left_padded([5, 8, 3])
    ours = run(model, ids, mask, cfg(greedy=True))
    with torch.no_grad():
        theirs = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
            pad_token_id=PAD, eos_token_id=EOS,
        )[:, ids.shape[1]:]
    n = ours.response_ids.shape[1]
    assert torch.equal(ours.response_ids, theirs[:, :n])


def test_eos_ends_the_row_and_masks_what_follows(model):
    ids, mask = left_padded([4, 6, 2])
    forced = ForceTokens(model, [(0, 3, EOS), (2, 0, EOS)], never_end=(1,))
    out = run(forced, ids, mask, cfg(max_new_tokens=10))
    assert out.response_ids.shape == (3, 10)
    assert out.response_mask.tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert out.response_mask.tolist()[2] == [1] + [0] * 9
    assert out.response_mask[1].tolist() == [1] * 10
    assert out.response_ids[0, 3] == EOS and torch.all(out.response_ids[0, 4:] == PAD)
    assert torch.all(out.response_ids[2, 1:] == PAD)
    assert torch.all(out.logprobs[0, 4:] == 0) and out.logprobs[0, 3] == pytest.approx(0.0, abs=1e-3)
    assert out.ended.tolist() == [True, False, True]
    assert out.response_lengths.tolist() == [4, 10, 1]


@pytest.mark.parametrize("check_every", [1, 8])
def test_stops_early_and_trims_when_every_row_has_ended(model, monkeypatch, check_every):
    monkeypatch.setattr(decoding, "_check_every", lambda device: check_every)  # 8 is the accelerator's
    ids, mask = left_padded([4, 6])
    forced = ForceTokens(model, [(0, 1, EOS), (1, 2, EOS)])
    out = run(forced, ids, mask, cfg(max_new_tokens=40))
    assert forced.calls == (3 if check_every == 1 else 8)  # not 40
    assert out.response_ids.shape == (2, 3)  # trimmed to the longest response
    assert out.ended.all() and out.response_lengths.tolist() == [2, 3]


def test_truncation_mode_samples_fixed_length_and_masks_after_first_truncate_token(model):
    TRUNC = 7
    ids, mask = left_padded([4, 6, 5])
    forced = ForceTokens(model, [(0, 2, TRUNC), (0, 4, TRUNC), (1, 1, EOS), (2, 0, TRUNC)])
    out = run(forced, ids, mask, cfg(max_new_tokens=10, truncate_token_id=TRUNC))
    assert out.response_ids.shape == (3, 10) and forced.calls == 10  # no early stop
    assert out.response_mask[0].tolist() == [1, 1, 1] + [0] * 7
    assert torch.all(out.response_ids[0, 3:] == PAD) and torch.all(out.logprobs[0, 3:] == 0)
    assert out.response_ids[1, 1] == EOS and out.response_mask[1].tolist() == [1] * 10  # EOS is ordinary
    assert out.ended.tolist() == [True, False, True]


def test_without_stop_at_eos_every_row_runs_the_full_length(model):
    ids, mask = left_padded([4, 6])
    forced = ForceTokens(model, [(0, 1, EOS)])
    out = run(forced, ids, mask, cfg(max_new_tokens=6, stop_at_eos=False))
    assert out.response_ids[0, 1] == EOS
    assert out.response_mask.tolist() == [[1] * 6, [1] * 6] and not out.ended.any()


def test_tiny_top_p_is_greedy(model):
    ids, mask = left_padded([4, 6, 3])
    greedy = run(model, ids, mask, cfg(greedy=True, stop_at_eos=False))
    nucleus = run(model, ids, mask, cfg(top_p=1e-6, stop_at_eos=False), seed=3)
    top1 = run(model, ids, mask, cfg(top_k=1, stop_at_eos=False), seed=4)
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    assert torch.equal(top1.response_ids, greedy.response_ids)
    # log-probs are those of the untruncated distribution, not 0 = log 1 of the truncated one
    torch.testing.assert_close(nucleus.logprobs, greedy.logprobs)
    assert torch.all(nucleus.logprobs < 0)


def test_seeded_generator_reproduces_samples(model):
    ids, mask = left_padded([4, 6, 3])
    a = run(model, ids, mask, cfg(), seed=11)
    b = run(model, ids, mask, cfg(), seed=11)
    c = run(model, ids, mask, cfg(), seed=12)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_temperature_scales_the_logprobs():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for T in (1.0, 0.5, 2.0):
        token, lp = _next_token(logits, cfg(greedy=True, temperature=T), None)
        assert token.item() == 0
        assert lp.item() == pytest.approx(torch.log_softmax(logits / T, -1)[0, 0].item(), abs=1e-6)
    sharper = _next_token(logits, cfg(greedy=True, temperature=0.5), None)[1]
    flatter = _next_token(logits, cfg(greedy=True, temperature=2.0), None)[1]
    assert sharper > flatter


def test_truncate_keeps_top_k_and_smallest_nucleus():
    w = torch.tensor([[3.0, 10.0, 1.0, 6.0]])  # probabilities 0.15, 0.5, 0.05, 0.3

    def kept(top_k, top_p):
        return (_truncate(w, top_k, top_p) > 0).long().tolist()[0]

    assert kept(0, 0.8) == [0, 1, 0, 1]  # 0.5 + 0.3 reaches 0.8
    assert kept(0, 0.81) == [1, 1, 0, 1]
    assert kept(0, 1e-9) == [0, 1, 0, 0]  # always at least one token
    assert kept(2, 1.0) == [0, 1, 0, 1]
    assert kept(3, 0.75) == [0, 1, 0, 1]  # nucleus of the renormalised top-3: 10 / 19 < 0.75 <= 16 / 19
    assert torch.equal(_truncate(w, 0, 1.0), w)


def test_draw_follows_the_weights_and_never_draws_zero_weight():
    w = torch.tensor([[0.0, 5.0, 0.0, 2.0, 3.0, 0.0]]).expand(40_000, 6)
    counts = torch.bincount(_draw(w, torch.rand(40_000, generator=torch.Generator().manual_seed(0))),
                            minlength=6).double() / 40_000
    assert counts[[0, 2, 5]].sum() == 0
    expected = torch.tensor([0.5, 0.2, 0.3], dtype=torch.double)
    torch.testing.assert_close(counts[[1, 3, 4]], expected, atol=0.01, rtol=0)


def test_pad_equal_to_eos_is_rejected(model):
    ids, mask = left_padded([3])
    with pytest.raises(ValueError, match="pad_token_id == eos_token_id"):
        sample(model, ids, mask, SamplingConfig(max_new_tokens=4, eos_token_id=EOS, pad_token_id=EOS))


def test_right_padded_prompts_are_rejected(model):
    ids, mask = left_padded([3, 5])
    with pytest.raises(ValueError, match="left padded"):
        sample(model, ids, mask.flip(-1), cfg())


def test_full_attention_models_get_the_preallocated_cache(model):
    assert all(isinstance(layer, _PreallocatedLayer) for layer in _make_cache(model, 16).layers)


def test_sliding_window_models_keep_their_own_cache():
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, max_position_embeddings=128,
    )
    mistral = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert not any(isinstance(layer, _PreallocatedLayer) for layer in _make_cache(mistral, 16).layers)
    ids, mask = left_padded([3, 7])
    out = run(mistral, ids, mask, cfg(max_new_tokens=8))
    recomputed = response_logprobs(mistral, ids, mask, out.response_ids, out.response_mask)
    torch.testing.assert_close(out.logprobs, recomputed, atol=1e-4, rtol=0)
