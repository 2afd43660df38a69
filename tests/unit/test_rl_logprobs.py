"""prefloop.rl.logprobs: log-probs and entropies from logits, with temperature."""

import math

import pytest
import torch

from prefloop.rl import entropy_from_logits, logprobs_from_logits


def naive_logprobs(logits, tokens, temperature=1.0):
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            z = [float(logits[b, t, v]) / temperature for v in range(V)]
            norm = math.log(sum(math.exp(zi) for zi in z))
            out[b, t] = z[int(tokens[b, t])] - norm
    return out


def naive_entropy(logits, temperature=1.0):
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            z = [float(logits[b, t, v]) / temperature for v in range(V)]
            s = sum(math.exp(zi) for zi in z)
            out[b, t] = -sum(math.exp(zi) / s * math.log(math.exp(zi) / s) for zi in z)
    return out


def test_hand_example():
    # logits [0, ln 3]: p = [1/4, 3/4]. With temperature 2, logits [0, 2 ln 3] / 2 are the same.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    lp = logprobs_from_logits(logits, torch.tensor([[1]]))
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    hot = torch.tensor([[[0.0, 2 * math.log(3.0)]]])
    lp2 = logprobs_from_logits(hot, torch.tensor([[0]]), temperature=2.0)
    assert lp2.item() == pytest.approx(math.log(0.25), abs=1e-6)
    # Entropy of [1/4, 3/4] = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623
    want = 0.25 * math.log(4) + 0.75 * math.log(4 / 3)
    assert entropy_from_logits(logits).item() == pytest.approx(want, abs=1e-6)


def test_matches_naive_and_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g) * 3
    tokens = torch.randint(0, 7, (3, 4), generator=g)
    for temp in (1.0, 2.0, 0.7):
        lp = logprobs_from_logits(logits, tokens, temp)
        torch.testing.assert_close(lp.double(), naive_logprobs(logits, tokens, temp), atol=1e-5, rtol=0)
        ref = torch.log_softmax(logits / temp, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(lp, ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(entropy_from_logits(logits, temp).double(), naive_entropy(logits, temp),
                                   atol=1e-5, rtol=0)


def test_gradient_matches_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    w = torch.randn(3, 5, generator=g)
    a = logits.clone().requires_grad_()
    (logprobs_from_logits(a, tokens, 0.7) * w).sum().backward()
    b = logits.clone().requires_grad_()
    (torch.log_softmax(b / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)


def test_bf16_logits_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 3, 50, generator=g) * 4).bfloat16()
    tokens = torch.randint(0, 50, (2, 3), generator=g)
    lp = logprobs_from_logits(logits, tokens)
    assert lp.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)


def test_entropy_uniform_and_minus_inf():
    # Uniform over 8 tokens: H = ln 8. A row with all mass on one token (others -inf): H = 0, not nan.
    assert entropy_from_logits(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8), abs=1e-6)
    peaked = torch.tensor([[[0.0, -math.inf, -math.inf]]])
    assert entropy_from_logits(peaked).item() == 0.0


def test_bad_temperature_and_empty_batch():
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), 0.0)
    assert logprobs_from_logits(torch.zeros(0, 3, 5), torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)
    assert entropy_from_logits(torch.zeros(0, 3, 5)).shape == (0, 3)
