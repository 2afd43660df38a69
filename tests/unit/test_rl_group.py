"""prefloop.rl.group: GRPO and RLOO advantages, KL in the reward, clipped surrogate with token or
sequence averaging and a k3 KL loss term; hand-computed values and naive loops."""

import math
import statistics

import pytest
import torch

from prefloop.rl.group import (
    group_advantages,
    kl_penalised_scores,
    leave_one_out_advantages,
    pg_loss_sequence_mean,
    pg_loss_token_mean,
)

# ---------------------------------------------------------------- advantages


def test_group_advantages_hand_example():
    # Group (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1). Group (0, 0, 6): mean 2, std sqrt(12).
    adv, stats = group_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0]), 3, eps=0.0)
    s = math.sqrt(12)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, -2 / s, -2 / s, 4 / s]))
    assert stats["rollout/group_std"] == pytest.approx((1 + s) / 2)
    assert stats["rollout/zero_std_fraction"] == 0.0


def test_group_advantages_without_std_scaling_is_mean_centred():
    # Dr. GRPO: only the group mean is subtracted.
    adv, _ = group_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0]), 3, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, -2.0, -2.0, 4.0]))


def test_group_advantages_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, generator=g, dtype=torch.float64)
    adv, _ = group_advantages(scores, 4, eps=1e-4)
    for i in range(20):
        grp = scores[i // 4 * 4:i // 4 * 4 + 4].tolist()
        want = (scores[i].item() - statistics.mean(grp)) / (statistics.stdev(grp) + 1e-4)
        assert adv[i].item() == pytest.approx(want, rel=1e-9)


def test_constant_group_has_no_signal():
    adv, stats = group_advantages(torch.tensor([5.0, 5.0, 1.0, 3.0]), 2)
    assert adv[:2].tolist() == [0.0, 0.0]
    assert adv[2].item() == pytest.approx(-1 / (math.sqrt(2) + 1e-4))
    assert stats["rollout/zero_std_fraction"] == 0.5


def test_leave_one_out_hand_example():
    # Group (1, 2, 6): baselines (4, 3.5, 1.5) -> advantages (-3, -1.5, 4.5); group (2, 4): (-2, 2).
    adv, stats = leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0]), 3)
    torch.testing.assert_close(adv, torch.tensor([-3.0, -1.5, 4.5]))
    adv, _ = leave_one_out_advantages(torch.tensor([2.0, 4.0]), 2)
    torch.testing.assert_close(adv, torch.tensor([-2.0, 2.0]))
    assert stats["rollout/group_std"] == pytest.approx(statistics.stdev([1, 2, 6]))


def test_leave_one_out_matches_naive_loop_and_is_scaled_group_mean():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(15, generator=g, dtype=torch.float64)
    adv, _ = leave_one_out_advantages(scores, 5)
    for i in range(15):
        others = [scores[j].item() for j in range(i // 5 * 5, i // 5 * 5 + 5) if j != i]
        assert adv[i].item() == pytest.approx(scores[i].item() - statistics.mean(others), rel=1e-9)
    # Known identity: RLOO's advantage is K / (K - 1) times the mean-centred one.
    centred, _ = group_advantages(scores, 5, scale_by_std=False)
    torch.testing.assert_close(adv, centred * 5 / 4)


@pytest.mark.parametrize("fn", [group_advantages, leave_one_out_advantages])
def test_bad_groups_are_refused(fn):
    with pytest.raises(ValueError, match="groups of 3"):
        fn(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="at least 2"):
        fn(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 2), 2)


# ---------------------------------------------------------------- KL in the reward


def test_kl_penalised_scores_hand_example():
    # Row 0: k1 = (0.5 - 0.0) + (-1 - -2) = 1.5 over two real tokens; row 1: only its first token is real,
    # k1 = -0.5 (garbage at the pad is ignored). beta 0.1 -> scores (2 - 0.15, 1 + 0.05).
    logp = torch.tensor([[0.5, -1.0], [-1.0, 100.0]])
    ref = torch.tensor([[0.0, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out, stats = kl_penalised_scores(torch.tensor([2.0, 1.0]), logp, ref, mask, 0.1)
    torch.testing.assert_close(out, torch.tensor([1.85, 1.05]))
    assert stats["kl/k1"] == pytest.approx(0.5)
    assert stats["rollout/kl_penalty"] == pytest.approx(-0.05)
    assert not out.requires_grad


# ---------------------------------------------------------------- losses


def _naive_loss(logp, old, adv, mask, eps, ref, beta, per_sequence):
    """Python loops over rows and tokens: the clipped surrogate plus beta * k3."""
    rows = []
    all_terms = []
    for b in range(len(logp)):
        terms = []
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            r = math.exp(logp[b][t] - old[b][t])
            a = float(adv[b])
            term = max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
            if ref is not None:
                x = ref[b][t] - logp[b][t]
                term += beta * (math.exp(x) - 1 - x)
            terms.append(term)
        rows.append(sum(terms) / len(terms) if terms else 0.0)
        all_terms += terms
    return sum(rows) / len(rows) if per_sequence else sum(all_terms) / len(all_terms)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 2
    old = logp + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.3
    ref = logp + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.5
    adv = torch.tensor([1.5, -0.7, 0.2], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("fn,per_sequence", [(pg_loss_token_mean, False), (pg_loss_sequence_mean, True)])
@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_losses_match_naive_loops(fn, per_sequence, beta):
    logp, old, ref, adv, mask = _batch()
    loss, stats = fn(logp, old, adv, mask, 0.2, ref_logprobs=ref, kl_coef=beta)
    want = _naive_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2,
                       ref.tolist() if beta else None, beta, per_sequence)
    assert loss.item() == pytest.approx(want, rel=1e-9)
    assert stats["loss/total"] == pytest.approx(want, rel=1e-9)
    assert ("loss/kl" in stats) == (beta > 0)


def test_token_and_sequence_means_differ_by_length_weighting():
    # Ratio 1 everywhere: per-token loss is -A. Rows of 3 and 1 real tokens with A = 1 and 3:
    # token mean (3 * -1 + 1 * -3) / 4 = -1.5; sequence mean (-1 + -3) / 2 = -2.
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, 3.0])
    tok, _ = pg_loss_token_mean(logp, logp, adv, mask)
    seq, _ = pg_loss_sequence_mean(logp, logp, adv, mask)
    assert tok.item() == pytest.approx(-1.5) and seq.item() == pytest.approx(-2.0)


def test_on_policy_gradient_is_reinforce():
    # old_logprobs=None: ratio 1 and d loss / d logp_t = -A_b / N_tokens, REINFORCE's gradient (token mean).
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = pg_loss_token_mean(logp, None, torch.tensor([2.0, -1.0]), mask)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2 / 3, -2 / 3], [1 / 3, 0.0]]))
    assert stats["policy/clipfrac"] == 0.0 and stats["policy/ratio_mean"] == pytest.approx(1.0)


def test_clipping_stops_the_gradient():
    # A > 0 and ratio e^0.5 > 1.2: the clipped term is larger, so the token has no gradient.
    logp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    loss, stats = pg_loss_token_mean(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() == pytest.approx(-0.5)
    assert stats["policy/clipfrac"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2)


def test_kl_loss_gradient_pulls_towards_reference():
    # Zero advantages: only beta * k3 remains. Where the policy is above the reference the gradient is
    # positive (descent lowers logp) and vice versa; at logp == ref it is 0. d k3 / d logp = 1 - e^(ref - logp).
    logp = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -1.0]])
    loss, stats = pg_loss_sequence_mean(logp, None, torch.zeros(1), torch.ones(1, 3), ref_logprobs=ref, kl_coef=0.5)
    loss.backward()
    want = 0.5 / 3 * (1 - torch.exp(ref - logp.detach()))
    torch.testing.assert_close(logp.grad, want)
    assert logp.grad[0, 0] > 0 and logp.grad[0, 1] == 0 and logp.grad[0, 2] < 0
    k3 = [math.exp(x) - 1 - x for x in (-1.0, 0.0, 1.0)]
    assert stats["loss/kl"] == pytest.approx(sum(k3) / 3)


def test_padding_garbage_never_reaches_loss_or_gradient():
    logp = torch.tensor([[-1.0, float("inf")], [-0.5, float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.2, 0.0], [-0.4, float("-inf")]])
    ref = torch.tensor([[-1.1, float("nan")], [-0.3, 5.0]])
    mask = torch.tensor([[1, 0], [1, 0]])
    for fn in (pg_loss_token_mean, pg_loss_sequence_mean):
        logp.grad = None
        loss, _ = fn(logp, old, torch.tensor([1.0, -1.0]), mask, ref_logprobs=ref, kl_coef=0.1)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
        assert logp.grad[:, 1].tolist() == [0.0, 0.0]
