"""prefloop.rl.advantages: per-token rewards (KL penalty + score at the last token) and GAE."""

import pytest
import torch

from prefloop.rl import gae, token_rewards


def prefix_mask(lengths, R):
    return (torch.arange(R)[None, :] < torch.tensor(lengths)[:, None]).long()


def naive_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    B, R = mask.shape
    rewards, kl = torch.zeros(B, R), torch.zeros(B, R)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            kl[b, t] = logprobs[b, t] - ref_logprobs[b, t]
            rewards[b, t] = -kl_coef * kl[b, t]
        if n > 0:
            rewards[b, n - 1] += scores[b]
    return rewards, kl


def naive_gae(rewards, values, mask, gamma, lam):
    B, R = mask.shape
    adv, ret = torch.zeros(B, R, dtype=torch.float64), torch.zeros(B, R, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_value = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            adv[b, t] = running
            ret[b, t] = running + float(values[b, t])
    return adv, ret


def test_token_rewards_hand_example():
    # kl_coef 0.1. Row 0 (3 real tokens): k1 = [0.5, -1, 2] -> [-0.05, 0.1, -0.2 + score 1]
    #                                                           = [-0.05, 0.1, 0.8].
    # Row 1 (2 real tokens): k1 = [0.2, 0.4], pad ignored -> [-0.02, -0.04 + 2] = [-0.02, 1.96, 0].
    # Row 2 (empty): all 0, its score 5 is placed nowhere.
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 9.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -2.5], [-1.2, -1.4, float("nan")], [0.0, 0.0, 0.0]])
    mask = prefix_mask([3, 2, 0], 3)
    rewards, kl = token_rewards(torch.tensor([1.0, 2.0, 5.0]), logprobs, ref, mask, 0.1)
    want = torch.tensor([[-0.05, 0.1, 0.8], [-0.02, 1.96, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, want)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 2.0], [0.2, 0.4, 0.0], [0.0, 0.0, 0.0]]))


def test_token_rewards_matches_naive():
    g = torch.Generator().manual_seed(0)
    B, R = 6, 7
    lengths = [7, 0, 1, 4, 3, 6]
    scores = torch.randn(B, generator=g)
    logprobs, ref = -torch.rand(B, R, generator=g) * 3, -torch.rand(B, R, generator=g) * 3
    mask = prefix_mask(lengths, R).bool()
    rewards, kl = token_rewards(scores, logprobs, ref, mask, 0.05)
    want_r, want_kl = naive_token_rewards(scores, logprobs, ref, mask, 0.05)
    torch.testing.assert_close(rewards, want_r)
    torch.testing.assert_close(kl, want_kl)
    assert not rewards.requires_grad


def test_gae_hand_example_length_3_with_padding():
    # gamma 0.9, lam 0.5, r = [1, 0, 2], V = [0.5, 1.0, 1.5], V after the end = 0:
    #   t=2: delta = 2 + 0 - 1.5 = 0.5;               A2 = 0.5
    #   t=1: delta = 0 + 0.9 * 1.5 - 1.0 = 0.35;      A1 = 0.35 + 0.45 * 0.5 = 0.575
    #   t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4;       A0 = 1.4 + 0.45 * 0.575 = 1.65875
    # returns = A + V = [2.15875, 1.575, 2.0]; the padded 4th position (garbage 100 / 7) stays 0.
    rewards = torch.tensor([[1.0, 0.0, 2.0, 100.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 7.0]])
    adv, ret = gae(rewards, values, prefix_mask([3], 4), gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[1.65875, 0.575, 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.15875, 1.575, 2.0, 0.0]]))


def test_gae_lambda_one_gives_reward_to_go():
    # gamma = lam = 1: returns are the sum of future rewards whatever the values: [1, 0, 2] -> [3, 2, 2].
    g = torch.Generator().manual_seed(1)
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    adv, ret = gae(rewards, torch.randn(1, 3, generator=g), torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[3.0, 2.0, 2.0]]))
    rewards, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = prefix_mask([6, 3, 1, 0], 6)
    _, ret = gae(rewards, values, mask, 1.0, 1.0)
    to_go = (rewards * mask).flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(ret, to_go)


def test_gae_lambda_zero_gives_one_step_td():
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = prefix_mask([5, 2, 4], 5)
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(3, 1)], 1)  # 0 after the last token
    td = (rewards + 0.9 * next_values - values) * mask
    torch.testing.assert_close(adv, td)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0)])
def test_gae_matches_naive_loop(gamma, lam):
    g = torch.Generator().manual_seed(3)
    B, R = 7, 9
    rewards, values = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g)
    mask = prefix_mask([9, 0, 1, 5, 8, 2, 9], R)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv.double(), want_adv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret.double(), want_ret, atol=1e-5, rtol=0)


def test_gae_carries_no_gradient():
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.randn(2, 3), values, torch.ones(2, 3))
    assert not adv.requires_grad and not ret.requires_grad
