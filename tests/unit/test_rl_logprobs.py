"""prefloop.rl.logprobs: log-probs and entropies from logits or hidden states, with temperature, in chunks."""

import math

import pytest
import torch

from prefloop.rl import token_logprobs


def logprobs_from_logits(logits, tokens, temperature=1.0, chunk_size=None):
    return token_logprobs(logits, tokens, temperature, chunk_size=chunk_size).logprobs


def entropy_from_logits(logits, temperature=1.0):
    return token_logprobs(logits, None, temperature, entropy=True).entropy


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


# -- chunks: the same numbers as the plain full-vocabulary path ------------------------------------------------

def plain(logits, tokens, temperature):
    """The unchunked reference: one (B, T, V) float32 log-softmax."""
    z = logits.float() / temperature
    return torch.log_softmax(z, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, 20, 21, 1000])
def test_chunked_logprobs_equal_the_plain_path_in_values_and_gradients(chunk_size, temperature):
    # 3 x 7 = 21 positions: chunk sizes 2, 5 and 20 leave a short last chunk; right padding as in training.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 13, generator=g) * 3
    tokens = torch.randint(0, 13, (3, 7), generator=g)
    mask = torch.ones(3, 7)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    w = torch.randn(3, 7, generator=g) * mask
    a = logits.clone().requires_grad_()
    out = token_logprobs(a, tokens, temperature, chunk_size=chunk_size, entropy=True)
    (out.logprobs * w).sum().backward()
    b = logits.clone().requires_grad_()
    want = plain(b, tokens, temperature)
    (want * w).sum().backward()
    torch.testing.assert_close(out.logprobs, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.entropy.double(), naive_entropy(logits, temperature), atol=1e-5, rtol=0)
    assert not out.entropy.requires_grad  # a statistic


class RecordingHead(torch.nn.Module):
    """A linear output head that records how many positions each call projects onto the vocabulary."""

    def __init__(self, d: int, vocab: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(d, vocab)
        self.rows: list[int] = []

    def forward(self, h):
        self.rows.append(h.shape[0])
        return self.linear(h)


@pytest.mark.parametrize("chunk_size", [3, 4, 10])
def test_chunked_head_projects_one_chunk_at_a_time_with_the_plain_gradients(chunk_size):
    # From hidden states: never more than chunk_size positions of logits at once, in the forward and in the
    # backward's recomputation, and the gradients reach the hidden states and the head as in the plain path.
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 5, 6, generator=g)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    w = torch.randn(2, 5, generator=g)
    head = RecordingHead(6, 11, seed=0)
    h1 = hidden.clone().requires_grad_()
    lp = token_logprobs(h1, tokens, 0.7, head=head, chunk_size=chunk_size).logprobs
    n_chunks = -(-10 // chunk_size)
    assert head.rows == [chunk_size] * (n_chunks - 1) + [10 - chunk_size * (n_chunks - 1)]
    (lp * w).sum().backward()
    # Recomputed in the backward, chunk by chunk; a single chunk is kept instead (nothing to save).
    assert max(head.rows) <= chunk_size and len(head.rows) == (2 * n_chunks if n_chunks > 1 else 1)
    grad_w = head.linear.weight.grad.clone()

    head.linear.weight.grad = None
    h2 = hidden.clone().requires_grad_()
    (plain(head.linear(h2), tokens, 0.7) * w).sum().backward()
    torch.testing.assert_close(lp, plain(head.linear(hidden), tokens, 0.7), atol=1e-6, rtol=0)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_w, head.linear.weight.grad, atol=1e-6, rtol=0)


def test_default_chunk_follows_the_vocabulary_size():
    # CHUNK_ELEMENTS // V positions per chunk: a 2^24-token vocabulary gets chunks of 4 positions.
    head = RecordingHead(6, 11, seed=0)
    with torch.no_grad():
        token_logprobs(torch.randn(10, 6), torch.zeros(10, dtype=torch.long), head=head, vocab_size=1 << 24)
    assert head.rows == [4, 4, 2]
    head.rows.clear()
    with torch.no_grad():  # a small vocabulary: the whole batch in one chunk, no recomputation
        token_logprobs(torch.randn(10, 6), torch.zeros(10, dtype=torch.long), head=head, vocab_size=11)
    assert head.rows == [10]


def test_chunk_arguments_are_checked():
    with pytest.raises(ValueError, match="vocab_size or chunk_size"):
        token_logprobs(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), head=torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), chunk_size=0)
