"""Every supported architecture: training log-probs equal the model's own logits, and dropout is really off.

Micro random models of each architecture are built from configs (`prefloop.models.arch_config`), once per
module. The reference is always `model(**batch).logits` log-softmaxed: what the saved model and the sampler
compute. Gemma 2/3, Cohere and Granite configs switch their logit post-processing on.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from prefloop.errors import LogitsMismatchError, ModelLoadError
from prefloop.models import (
    ARCHITECTURES,
    CausalLMLoss,
    ResponseForward,
    arch_config,
    check_logits,
    disable_dropout,
    hidden_logprobs,
    hidden_states,
    lm_logits,
    load_causal_lm,
)
from prefloop.recipes.dpo import SequenceLogprobs
from prefloop.rl import token_logprobs
from prefloop.rollout import SamplingConfig, sample

VOCAB = 64


def build(arch: str, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    cfg = arch_config(arch, VOCAB, dropout=dropout, pad_token_id=1, eos_token_id=0, bos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_model(request):
    return request.param, build(request.param).eval()


def right_padded_batch(seed: int = 0):
    """Two rows of 9 and 6 tokens, right padded; labels -100 on the first 3 (prompt) tokens and on pads."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return ids, mask, labels


def reference_logprobs(model, ids, mask):
    """(B, T - 1) log p(token t | < t) from the model's own forward: the ground truth."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def test_postprocessing_configs_really_postprocess(arch_model):
    """The matrix would prove nothing for Gemma, Cohere and Granite if their head output were already the logits."""
    arch, model = arch_model
    ids, mask, _ = right_padded_batch()
    with torch.no_grad():
        plain = model.get_output_embeddings()(model.get_decoder()(input_ids=ids, attention_mask=mask)[0])
        own = model(input_ids=ids, attention_mask=mask).logits
    gap = float((plain - own).abs().max())
    if arch in ("gemma2", "gemma3", "cohere", "granite"):
        assert gap > 1e-3
    else:
        assert gap == 0.0


def test_sft_loss_equals_models_own_cross_entropy(arch_model):
    _, model = arch_model
    ids, mask, labels = right_padded_batch()
    ref = reference_logprobs(model, ids, mask)
    keep = labels[:, 1:] != -100
    with torch.no_grad():
        loss_sum = CausalLMLoss(model)(ids, mask, labels)
    assert float(loss_sum) == pytest.approx(float(-ref[keep].sum()), abs=1e-5 * keep.sum().item())


def test_response_and_pair_logprobs_equal_models_own(arch_model):
    """PPO/GRPO (ResponseForward) and DPO (SequenceLogprobs) read the same log-probs as the model's forward."""
    _, model = arch_model
    ids, mask, _ = right_padded_batch()
    ref = reference_logprobs(model, ids, mask)
    R = 5  # the last 5 columns are the "response"
    with torch.no_grad():
        lp, _, _ = ResponseForward(model)(ids, mask, ids[:, -R:])
    real = mask[:, -R:].bool()
    torch.testing.assert_close(lp[real].double(), ref[:, -R:][real], atol=1e-5, rtol=0)

    response = mask.clone()
    response[:, :3] = 0
    with torch.no_grad():
        sums, counts = SequenceLogprobs(model)(ids, mask, response)
    want = (ref * response[:, 1:]).sum(-1)
    torch.testing.assert_close(sums.double(), want, atol=1e-5, rtol=0)
    assert counts.tolist() == response[:, 1:].sum(-1).tolist()


def test_sampler_logprobs_equal_models_own(arch_model):
    """The KV-cache sampler's log-probs match a full forward over prompt + response on every architecture."""
    _, model = arch_model
    q = torch.randint(2, VOCAB, (2, 4), generator=torch.Generator().manual_seed(3))
    qm = torch.ones_like(q)
    q[1, 0], qm[1, 0] = 1, 0  # one left pad
    cfg = SamplingConfig(max_new_tokens=5, eos_token_id=0, pad_token_id=1, stop_at_eos=False)
    out = sample(model, q, qm, cfg, generator=torch.Generator().manual_seed(0))
    ids, mask = torch.cat([q, out.response_ids], 1), torch.cat([qm, out.response_mask], 1)
    with torch.no_grad():
        h = model.get_decoder()(input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        want = token_logprobs(lm_logits(model, h[:, 3:-1]), out.response_ids).logprobs
    torch.testing.assert_close(out.logprobs, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dropout_fully_off_in_training_mode(arch):
    """Config-level dropout (attention, hidden, residual, embedding) at 0.5: two training-mode forwards
    differ before `disable_dropout` and are identical after it."""
    model = build(arch, dropout=0.5).train()
    ids, mask, _ = right_padded_batch()

    def fwd():
        return model(input_ids=ids, attention_mask=mask).logits

    if arch != "gemma3":  # (Gemma 3 text declares only attention dropout, and its eager path ignores it on CPU)
        assert not torch.equal(fwd(), fwd())
    disable_dropout(model)
    assert model.training
    torch.testing.assert_close(fwd(), fwd(), atol=0, rtol=0)


class _ScaledConfig(transformers.LlamaConfig):
    model_type = "prefloop-test-scaled-llama"


class _ScaledLlama(transformers.LlamaForCausalLM):
    """A model whose forward post-processes its logits in a way prefloop does not know."""

    config_class = _ScaledConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.5
        return out


def _register_scaled():
    try:
        transformers.AutoConfig.register(_ScaledConfig.model_type, _ScaledConfig)
        transformers.AutoModelForCausalLM.register(_ScaledConfig, _ScaledLlama)
    except ValueError:  # already registered by an earlier test in this process
        pass


def test_unknown_postprocessing_is_refused(tmp_path):
    _register_scaled()
    cfg = _ScaledConfig(**arch_config("llama", VOCAB).to_dict())
    model = _ScaledLlama(cfg)
    with pytest.raises(LogitsMismatchError, match="_ScaledLlama computes its logits differently"):
        check_logits(model, "scaled")
    model.save_pretrained(tmp_path / "scaled")
    with pytest.raises(ModelLoadError, match=r"scaled: _ScaledLlama computes its logits differently .* will not train"):
        load_causal_lm(str(tmp_path / "scaled"))


def test_known_postprocessing_passes_the_load_check(tmp_path):
    model = build("gemma2")
    model.save_pretrained(tmp_path / "g")
    loaded = load_causal_lm(str(tmp_path / "g"))
    assert type(loaded).__name__ == "Gemma2ForCausalLM"


def test_loss_on_cohere_is_the_saved_models_real_loss(tmp_path):
    """The measured failure: SFT's logged loss must be the saved model's own cross-entropy."""
    model = build("cohere")
    ids, mask, labels = right_padded_batch(1)
    with torch.no_grad():
        ours = CausalLMLoss(model)(ids, mask, labels) / (labels[:, 1:] != -100).sum()
        own = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert float(ours) == pytest.approx(float(own), abs=1e-5)


def test_sampler_uses_the_current_cache_api():
    """No deprecation warning from transformers while sampling: the KV cache goes in under the name the
    installed release takes (`cache` since transformers 5.2x; `past_key_values` is removed in 5.40)."""
    import warnings

    model = build("llama").eval()
    q = torch.randint(2, VOCAB, (2, 4), generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(max_new_tokens=3, eos_token_id=0, pad_token_id=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample(model, q, torch.ones_like(q), cfg, generator=torch.Generator().manual_seed(0))
    deprecations = [str(w.message) for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert deprecations == []


def test_chunked_hidden_logprobs_equal_the_plain_head_with_gradients(arch_model):
    """`hidden_logprobs` in chunks of 3 positions (with the architecture's logit post-processing) gives the
    values and the parameter gradients of one full-vocabulary log-softmax over all positions."""
    _, model = arch_model
    ids, mask, labels = right_padded_batch(2)
    keep = labels[:, 1:] != -100
    targets = ids[:, 1:][keep]
    w = torch.linspace(-1.0, 1.0, int(keep.sum()))

    def grads(chunk_size):
        model.zero_grad(set_to_none=True)
        h = hidden_states(model, ids, mask)[:, :-1][keep]
        if chunk_size is None:  # the plain path: every position's logits at once
            lp = torch.log_softmax(lm_logits(model, h).float() / 0.7, -1).gather(1, targets[:, None]).squeeze(1)
        else:
            lp = hidden_logprobs(model, h, targets, 0.7, chunk_size=chunk_size).logprobs
        (lp * w).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    lp_chunked, g_chunked = grads(3)
    lp_plain, g_plain = grads(None)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(lp_chunked, lp_plain, atol=1e-5, rtol=0)
    assert g_chunked.keys() == g_plain.keys() and len(g_plain) > 2
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)
