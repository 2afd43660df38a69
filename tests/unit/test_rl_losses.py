"""prefloop.rl.losses: Bradley-Terry reward loss, PPO clipped policy loss, clipped value loss."""

import math

import pytest
import torch

from prefloop.rl import bradley_terry_loss, clipped_value_loss, ppo_policy_loss

# ---------------------------------------------------------------- Bradley-Terry


def test_bt_equal_rewards_give_log_2():
    # -log sigmoid(0) = log 2 = 0.6931
    loss, stats = bradley_terry_loss(torch.zeros(4), torch.zeros(4))
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["loss/reward"] == pytest.approx(math.log(2))
    assert stats["reward/accuracy"] == 0.0  # ties count as wrong


def test_bt_margin_shifts_the_loss():
    # chosen = rejected = 0, margin 1: -log sigmoid(-1) = log(1 + e) = 1.3133
    loss, _ = bradley_terry_loss(torch.zeros(2), torch.zeros(2), margin=torch.ones(2))
    assert loss.item() == pytest.approx(math.log(1 + math.e))
    # A gap of exactly the margin costs log 2 again.
    loss, _ = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), margin=torch.tensor([2.0]))
    assert loss.item() == pytest.approx(math.log(2))


def test_bt_stats_hand_example():
    # Pairs (1, 0), (2, 2), (3, 4): one strictly right, a tie, one wrong -> accuracy 1/3;
    # differences [1, 0, -1] -> margin 0; means: chosen 2, rejected 2.
    _, stats = bradley_terry_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0]))
    assert stats["reward/accuracy"] == pytest.approx(1 / 3)
    assert stats["reward/margin"] == pytest.approx(0.0)
    assert stats["reward/chosen"] == pytest.approx(2.0)
    assert stats["reward/rejected"] == pytest.approx(2.0)
    assert all(isinstance(v, float) for v in stats.values())


def test_bt_matches_naive_and_gradient_pushes_chosen_up():
    g = torch.Generator().manual_seed(0)
    c, r, m = torch.randn(8, generator=g), torch.randn(8, generator=g), torch.rand(8, generator=g)
    chosen, rejected = c.clone().requires_grad_(), r.clone().requires_grad_()
    loss, _ = bradley_terry_loss(chosen, rejected, m)
    naive = sum(math.log(1 + math.exp(-(float(c[i]) - float(r[i]) - float(m[i])))) for i in range(8)) / 8
    assert loss.item() == pytest.approx(naive, abs=1e-6)
    loss.backward()
    # Gradient descent raises chosen and lowers rejected: d loss / d chosen = -(1 - sigmoid(diff)) / B < 0.
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    torch.testing.assert_close(chosen.grad, -(1 - torch.sigmoid(c - r - m)) / 8)


# ---------------------------------------------------------------- PPO policy loss


def naive_ppo(logprobs, old, adv, mask, eps):
    total, n, clipped = 0.0, 0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(float(logprobs[b, t]) - float(old[b, t]))
            a = float(adv[b, t])
            l1, l2 = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            total += max(l1, l2)
            clipped += l2 > l1
            n += 1
    return total / n, clipped / n


def test_ppo_hand_example():
    # eps 0.2, 4 real tokens and a padded one (garbage):
    #   A=+1, ratio 0.9 (inside):               max(-0.9, -0.9) = -0.9
    #   A=+1, ratio 1.5 (above, clipped):       max(-1.5, -1.2) = -1.2   clipped
    #   A=-1, ratio 0.5 (below, clipped):       max( 0.5,  0.8) =  0.8   clipped
    #   A=-1, ratio 1.5 (above, pessimistic):   max( 1.5,  1.2) =  1.5
    # loss = (-0.9 - 1.2 + 0.8 + 1.5) / 4 = 0.05, clipfrac 2/4, ratio_mean (0.9 + 1.5 + 0.5 + 1.5) / 4 = 1.1
    ratios = torch.tensor([[0.9, 1.5, 0.5, 1.5, 1e30]])
    old = torch.full((1, 5), math.log(0.5))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    logprobs = (old + ratios.log()).requires_grad_()
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert stats["policy/clipfrac"] == 0.5
    assert stats["policy/ratio_mean"] == pytest.approx(1.1, abs=1e-6)
    log_r = [math.log(x) for x in (0.9, 1.5, 0.5, 1.5)]
    assert stats["policy/approxkl"] == pytest.approx(sum(0.5 * x * x for x in log_r) / 4, abs=1e-6)
    assert stats["policy/approxkl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in log_r) / 4, abs=1e-6)
    loss.backward()
    # d/d logprob of -A * ratio is -A * ratio / 4 where unclipped; 0 where clipped and at the pad.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.9 / 4, 0.0, 0.0, 1.5 / 4, 0.0]]))


def test_ppo_first_epoch_ratio_one():
    # logprobs == old: ratio 1 everywhere, loss = -mean(A) = -(1 + 2 - 3 + 4) / 4 = -1, nothing clipped.
    lp = torch.randn(1, 4)
    adv = torch.tensor([[1.0, 2.0, -3.0, 4.0]])
    loss, stats = ppo_policy_loss(lp, lp, adv, torch.ones(1, 4))
    assert loss.item() == pytest.approx(-1.0)
    assert stats["policy/clipfrac"] == 0.0 and stats["policy/approxkl"] == 0.0
    assert stats["policy/ratio_mean"] == 1.0


def test_ppo_matches_naive():
    g = torch.Generator().manual_seed(1)
    B, T = 5, 8
    old = -torch.rand(B, T, generator=g) * 3
    logprobs = old + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    want_loss, want_clipfrac = naive_ppo(logprobs, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(want_loss, abs=1e-5)
    assert stats["policy/clipfrac"] == pytest.approx(want_clipfrac, abs=1e-6)
    assert 0 < want_clipfrac < 1  # both branches exercised


# ---------------------------------------------------------------- value loss


def test_value_loss_hand_example():
    # eps 0.2:
    #   V=1.0, V_old=0.9, R=2: inside, both (1 - 2)^2 = 1                                  -> 1
    #   V=1.5, V_old=1.0, R=2: clip V to 1.2: (0.5)^2 = 0.25 vs (0.8)^2 = 0.64, clipped  -> 0.64
    #   V=1.5, V_old=1.0, R=0: clip V to 1.2: 2.25 vs 1.44                               -> 2.25
    # loss = 0.5 * (1 + 0.64 + 2.25) / 3 = 0.648333; clipfrac 1/3; value/mean = 4/3. Pad ignored.
    values = torch.tensor([[1.0, 1.5, 1.5, 50.0]], requires_grad=True)
    old = torch.tensor([[0.9, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0, float("inf")]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, old, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * 3.89 / 3, abs=1e-6)
    assert stats["loss/value"] == pytest.approx(0.5 * 3.89 / 3, abs=1e-6)
    assert stats["value/clipfrac"] == pytest.approx(1 / 3)
    assert stats["value/mean"] == pytest.approx(4 / 3)
    loss.backward()
    # d/dV of 0.5 * (V - R)^2 / 3 = (V - R) / 3 where unclipped: [-1/3, 0 (clipped), 1.5/3, 0 (pad)].
    torch.testing.assert_close(values.grad, torch.tensor([[-1 / 3, 0.0, 0.5, 0.0]]))


def test_value_loss_matches_naive():
    g = torch.Generator().manual_seed(2)
    B, T, eps = 4, 6, 0.2
    old = torch.randn(B, T, generator=g)
    values = old + torch.randn(B, T, generator=g) * 0.3
    returns = torch.randn(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    loss, _ = clipped_value_loss(values, old, returns, mask, eps)
    terms = []
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                v, vo, r = float(values[b, t]), float(old[b, t]), float(returns[b, t])
                vc = min(max(v, vo - eps), vo + eps)
                terms.append(max((v - r) ** 2, (vc - r) ** 2))
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-6)


def test_losses_accept_bf16_inputs():
    lp = torch.randn(2, 3).bfloat16()
    loss, _ = ppo_policy_loss(lp, lp.float(), torch.randn(2, 3), torch.ones(2, 3))
    assert loss.dtype == torch.float32
    v = torch.randn(2, 3)
    loss, _ = clipped_value_loss(v.bfloat16(), v, v + 1, torch.ones(2, 3))
    assert loss.dtype == torch.float32
