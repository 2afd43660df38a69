"""Full forwards over padded batches: position ids and response log-probs (with entropies)."""

from __future__ import annotations

import pytest
import torch
import transformers

from prefloop.models import position_ids
from prefloop.rollout import response_logprobs

VOCAB = 100


def model_logits(model, ids, mask):
    """The model's own forward, (B, T, V) logits, with the position ids every prefloop forward uses."""
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
            pad_token_id=0,
        )
    else:
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def test_position_ids_skip_left_and_right_pads():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]])
    assert torch.equal(position_ids(mask), expected)
    assert torch.equal(position_ids(mask.bool()), expected)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_model_logits_padding_is_invisible(kind):
    model = tiny_model(kind)
    ids = torch.randint(3, VOCAB, (1, 5))
    with torch.no_grad():
        alone = model_logits(model, ids, torch.ones_like(ids))
        left = model_logits(model, torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1),
                            torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]))
        right = model_logits(model, torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
                             torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]]))
    torch.testing.assert_close(left[:, 3:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right[:, :5], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_response_logprobs_against_naive_log_softmax(kind):
    model = tiny_model(kind)
    query = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    query_mask = (query != 0).long()
    response = torch.tensor([[11, 12, 2, 0], [13, 14, 15, 16]])
    response_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    T = 0.7
    with torch.no_grad():
        lp, entropy = response_logprobs(model, query, query_mask, response, response_mask, T, entropy=True)
        full = model_logits(model, torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1))
    naive = torch.log_softmax(full[:, 3:7] / T, -1).gather(-1, response[..., None]).squeeze(-1)
    naive = naive * response_mask
    p = torch.softmax(full[:, 3:7] / T, -1)
    naive_entropy = -(p * p.log()).sum(-1) * response_mask
    assert lp.shape == (2, 4) and entropy.shape == (2, 4)
    torch.testing.assert_close(lp, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, naive_entropy, atol=1e-5, rtol=1e-5)
    assert lp[0, 3] == 0.0  # masked position
    assert (lp[response_mask.bool()] < 0).all()
