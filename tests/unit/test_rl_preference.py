"""prefloop.rl.preference: DPO / cDPO / IPO, ranking (pairs, Plackett-Luce) and rating losses."""

import itertools
import math

import pytest
import torch

from prefloop.rl import bradley_terry_loss
from prefloop.rl.preference import (
    cdpo_loss,
    dpo_sigmoid_loss,
    implicit_rewards,
    ipo_loss,
    ordered_thresholds,
    ordinal_probs,
    ordinal_rating_loss,
    plackett_luce_loss,
    ranking_pairs_loss,
    rating_regression_loss,
    scale_ratings,
)


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def neg_logsig(x: float) -> float:  # -log sigmoid(x)
    return softplus(-x)


def t(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


# ---------------------------------------------------------------- DPO family

def test_dpo_equal_logps_give_log_2_and_no_accuracy():
    z = torch.zeros(3)
    loss, stats = dpo_sigmoid_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["rewards/accuracy"] == 0.0  # a tie is not a correct ordering
    assert stats["rewards/margin"] == 0.0
    assert all(type(v) is float for v in stats.values())  # the rl stats convention: python floats


def test_dpo_hand_example():
    # chosen -1 vs ref -2 (+1), rejected -3 vs ref -2 (-1): h = 2, beta 0.5 -> -log sigmoid(1) = 0.3133;
    # implicit rewards 0.5 and -0.5, margin 1, accuracy 1.
    loss, stats = dpo_sigmoid_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    assert stats["rewards/chosen"] == pytest.approx(0.5)
    assert stats["rewards/rejected"] == pytest.approx(-0.5)
    assert stats["rewards/margin"] == pytest.approx(1.0)
    assert stats["rewards/accuracy"] == 1.0
    assert stats["logps/chosen"] == pytest.approx(-1.0)
    assert stats["logps/rejected"] == pytest.approx(-3.0)


def random_logps(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g) * 10) for _ in range(4)]


def naive_h(c, r, rc, rr, i):
    return (float(c[i]) - float(rc[i])) - (float(r[i]) - float(rr[i]))


def test_dpo_family_match_naive_formulas():
    c, r, rc, rr = random_logps()
    beta, eps = 0.3, 0.2
    hs = [naive_h(c, r, rc, rr, i) for i in range(6)]
    dpo = sum(neg_logsig(beta * h) for h in hs) / 6
    cdpo = sum((1 - eps) * neg_logsig(beta * h) + eps * neg_logsig(-beta * h) for h in hs) / 6
    ipo = sum((h - 1 / (2 * beta)) ** 2 for h in hs) / 6
    assert dpo_sigmoid_loss(c, r, rc, rr, beta)[0].item() == pytest.approx(dpo, rel=1e-5)
    assert cdpo_loss(c, r, rc, rr, beta, eps)[0].item() == pytest.approx(cdpo, rel=1e-5)
    assert ipo_loss(c, r, rc, rr, beta)[0].item() == pytest.approx(ipo, rel=1e-5)
    acc = sum(beta * (float(c[i]) - float(rc[i])) > beta * (float(r[i]) - float(rr[i])) for i in range(6)) / 6
    assert dpo_sigmoid_loss(c, r, rc, rr, beta)[1]["rewards/accuracy"] == pytest.approx(acc)
    torch.testing.assert_close(implicit_rewards(c, rc, beta), beta * (c - rc))


def test_cdpo_with_zero_smoothing_is_dpo_and_has_a_finite_optimum():
    c, r, rc, rr = random_logps(seed=1)
    assert cdpo_loss(c, r, rc, rr, 0.1, 0.0)[0].item() == pytest.approx(dpo_sigmoid_loss(c, r, rc, rr, 0.1)[0].item())
    # With eps = 0.1 the loss of one pair is smallest at beta * h = log(0.9 / 0.1) = log 9, not at infinity.
    beta, eps = 1.0, 0.1
    hs = torch.linspace(0, 6, 601)
    losses = [cdpo_loss(t(h), t(0.0), t(0.0), t(0.0), beta, eps)[0].item() for h in hs.tolist()]
    best = hs[int(torch.tensor(losses).argmin())].item()
    assert best == pytest.approx(math.log(9), abs=0.011)
    with pytest.raises(ValueError):
        cdpo_loss(c, r, rc, rr, 0.1, 0.5)


def test_ipo_hand_values_and_target():
    z = torch.zeros(2)
    # h = 0, beta 0.1: (0 - 5)^2 = 25; at h = 1 / (2 beta) = 5 the loss is 0.
    assert ipo_loss(z, z, z, z, beta=0.1)[0].item() == pytest.approx(25.0)
    assert ipo_loss(t(5.0), t(0.0), t(0.0), t(0.0), beta=0.1)[0].item() == pytest.approx(0.0)


@pytest.mark.parametrize("fn", [dpo_sigmoid_loss, cdpo_loss, ipo_loss])
def test_dpo_family_gradient_raises_chosen_lowers_rejected_and_spares_reference(fn):
    c, r, rc, rr = random_logps(seed=2)
    c, r = c.clone().requires_grad_(), r.clone().requires_grad_()
    rc, rr = rc.clone().requires_grad_(), rr.clone().requires_grad_()
    # With the policy as its own reference every pair sits at h = 0, below the optimum of all three losses,
    # so the gradient must raise the chosen and lower the rejected log-probs.
    loss, _ = fn(c, r, c.detach(), r.detach(), 0.1)
    loss.backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()
    loss2, _ = fn(c, r, rc, rr, 0.1)
    loss2.backward()
    assert rc.grad is None and rr.grad is None  # the reference is a constant


def test_dpo_bf16_inputs_are_computed_in_float32():
    c, r, rc, rr = (x.to(torch.bfloat16) for x in random_logps(seed=3))
    loss, _ = dpo_sigmoid_loss(c, r, rc, rr, 0.1)
    assert loss.dtype == torch.float32


# ---------------------------------------------------------------- rankings

def test_ranking_pairs_hand_example():
    # Response 0 best, then 1, then 2; scores 3, 1, 2. Pairs (0,1): +2, (0,2): +1, (1,2): -1.
    loss, stats = ranking_pairs_loss(t(3.0, 1.0, 2.0).unsqueeze(0), torch.tensor([[0, 1, 2]]))
    expect = (neg_logsig(2) + neg_logsig(1) + neg_logsig(-1)) / 3
    assert loss.item() == pytest.approx(expect, abs=1e-6)
    assert stats["reward/accuracy"] == pytest.approx(2 / 3)
    assert stats["reward/margin"] == pytest.approx(2 / 3)
    assert stats["reward/pairs"] == 3


def test_ranking_pairs_ties_are_skipped():
    # Responses 0 and 1 tied at the top, 2 last: only pairs (0,2) and (1,2) count.
    loss, stats = ranking_pairs_loss(t(0.0, 5.0, 1.0).unsqueeze(0), torch.tensor([[0, 0, 1]]))
    assert loss.item() == pytest.approx((neg_logsig(-1) + neg_logsig(4)) / 2, abs=1e-6)
    assert stats["reward/pairs"] == 2
    # All tied: nothing to learn, loss 0 (and no nan).
    loss, _ = ranking_pairs_loss(torch.randn(1, 3), torch.zeros(1, 3, dtype=torch.long))
    assert loss.item() == 0.0


def test_ranking_pairs_weights_each_ranking_equally_and_respects_padding():
    # Ranking A: K = 2 (third slot is padding with a garbage score); ranking B: K = 3.
    scores = torch.tensor([[1.0, 0.0, 100.0], [0.0, 1.0, 2.0]])
    ranks = torch.tensor([[0, 1, 2], [0, 1, 2]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, stats = ranking_pairs_loss(scores, ranks, mask)
    a = neg_logsig(1)
    b = (neg_logsig(-1) + neg_logsig(-2) + neg_logsig(-1)) / 3
    assert loss.item() == pytest.approx((a + b) / 2, abs=1e-6)
    assert stats["reward/pairs"] == 4


def naive_pairs(scores, ranks):
    per = []
    for s, rk in zip(scores.tolist(), ranks.tolist()):
        terms = [neg_logsig(s[i] - s[j]) for i, j in itertools.permutations(range(len(s)), 2) if rk[i] < rk[j]]
        if terms:
            per.append(sum(terms) / len(terms))
    return sum(per) / len(per)


def test_ranking_pairs_matches_naive_loop_and_k2_is_bradley_terry():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 4, generator=g)
    ranks = torch.stack([torch.randperm(4, generator=g) for _ in range(5)])
    assert ranking_pairs_loss(scores, ranks)[0].item() == pytest.approx(naive_pairs(scores, ranks), rel=1e-5)
    two = torch.randn(6, 2, generator=g)
    ranks2 = torch.tensor([[0, 1]] * 6)
    bt, _ = bradley_terry_loss(two[:, 0], two[:, 1])
    assert ranking_pairs_loss(two, ranks2)[0].item() == pytest.approx(bt.item(), rel=1e-6)
    assert plackett_luce_loss(two, ranks2)[0].item() == pytest.approx(bt.item(), rel=1e-6)


def test_plackett_luce_hand_example():
    # Equal scores, K = 3: -log P = log 3 + log 2 (pick 1 of 3, then 1 of 2), divided by K - 1 = 2.
    loss, _ = plackett_luce_loss(torch.zeros(1, 3), torch.tensor([[0, 1, 2]]))
    assert loss.item() == pytest.approx((math.log(3) + math.log(2)) / 2, abs=1e-6)


def pl_prob(s, order):
    p, rest = 1.0, list(order)
    for i in order:
        p *= math.exp(s[i]) / sum(math.exp(s[j]) for j in rest)
        rest.remove(i)
    return p


def test_plackett_luce_is_a_distribution_over_orders_and_matches_naive():
    s = [0.3, -1.2, 2.0, 0.5]
    total = 0.0
    for order in itertools.permutations(range(4)):
        ranks = torch.empty(1, 4, dtype=torch.long)
        for pos, i in enumerate(order):
            ranks[0, i] = pos
        loss, _ = plackett_luce_loss(torch.tensor([s]), ranks)
        nll = loss.item() * 3  # undo the 1 / (K - 1)
        assert nll == pytest.approx(-math.log(pl_prob(s, order)), rel=1e-5)
        total += math.exp(-nll)
    assert total == pytest.approx(1.0, abs=1e-5)


def test_plackett_luce_ties_and_padding():
    # Breslow ties: responses 0 and 1 tied at the top, both choose from {0, 1, 2}; 2 chooses from {2}.
    s = [1.0, 0.0, -1.0]
    lse = math.log(sum(math.exp(x) for x in s))
    loss, _ = plackett_luce_loss(torch.tensor([s]), torch.tensor([[0, 0, 1]]))
    assert loss.item() == pytest.approx(((lse - 1.0) + (lse - 0.0)) / 2, abs=1e-6)
    # A padded slot changes nothing, and its garbage score gets no gradient.
    scores = torch.tensor([[0.5, -0.5, 50.0]], requires_grad=True)
    loss, _ = plackett_luce_loss(scores, torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, False]]))
    assert loss.item() == pytest.approx(neg_logsig(1.0), abs=1e-6)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 2].item() == 0.0


@pytest.mark.parametrize("fn", [ranking_pairs_loss, plackett_luce_loss])
def test_ranking_losses_train_scores_into_the_ranking_order(fn):
    ranks = torch.tensor([[2, 0, 3, 1]])
    scores = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([scores], lr=1.0)
    for _ in range(50):
        loss, stats = fn(scores, ranks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["reward/accuracy"] == 1.0
    assert scores[0].argsort(descending=True).tolist() == [1, 3, 0, 2]


# ---------------------------------------------------------------- ratings

def test_scale_ratings_maps_any_scale_to_minus_one_one():
    torch.testing.assert_close(scale_ratings(t(1, 4, 7), 1.0, 7.0), t(-1, 0, 1))
    torch.testing.assert_close(scale_ratings(t(1, 2, 3), t(1, 1, 1), t(3, 3, 3)), t(-1, 0, 1))


def test_rating_regression_hand_example():
    # Targets -1, 0, 1 on a 1-7 scale; predictions 0: squared errors 1, 0, 1 -> 2/3; MAE 2/3.
    loss, stats = rating_regression_loss(torch.zeros(3), t(1, 4, 7), t(1, 1, 1), t(7, 7, 7))
    assert loss.item() == pytest.approx(2 / 3)
    assert stats["rating/mae"] == pytest.approx(2 / 3)


def test_ordered_thresholds_increase():
    th = ordered_thresholds(torch.tensor([0.5, -10.0, 0.0, 3.0]))
    assert th[0].item() == 0.5 and (th[1:] > th[:-1]).all()


def test_ordinal_two_levels_is_logistic():
    # K = 2, threshold 0: P(y = 1 | f) = sigmoid(f); f = 0 -> log 2, f = 2 for level 1 -> -log sigmoid(2).
    loss, _ = ordinal_rating_loss(torch.zeros(1), torch.tensor([1]), t(0.0))
    assert loss.item() == pytest.approx(math.log(2))
    loss, _ = ordinal_rating_loss(t(2.0), torch.tensor([1]), t(0.0))
    assert loss.item() == pytest.approx(neg_logsig(2.0), abs=1e-6)


def test_ordinal_probs_match_naive_and_sum_to_one():
    th = t(-1.0, 0.0, 0.5, 2.0)
    f = t(-3.0, 0.2, 4.0)
    p = ordinal_probs(f, th)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    cuts = [-math.inf] + th.tolist() + [math.inf]
    for b, fb in enumerate(f.tolist()):
        naive = [(1.0 if math.isinf(cuts[k + 1]) else sig(cuts[k + 1] - fb))
                 - (0.0 if math.isinf(cuts[k]) else sig(cuts[k] - fb)) for k in range(5)]
        assert p[b].tolist() == pytest.approx(naive, abs=1e-6)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    loss, stats = ordinal_rating_loss(f, torch.tensor([0, 2, 4]), th)
    assert loss.item() == pytest.approx(-(math.log(p[0, 0]) + math.log(p[1, 2]) + math.log(p[2, 4])) / 3, rel=1e-5)
    hits = (p.argmax(1) == torch.tensor([0, 2, 4])).float().mean()
    assert stats["rating/accuracy"] == pytest.approx(hits.item())


def test_ordinal_gradients_finite_at_extremes_and_push_score_towards_the_level():
    f = t(-60.0, 60.0, 0.0, 0.0).requires_grad_()
    raw = torch.tensor([-1.0, 0.0, 0.0], requires_grad=True)
    loss, _ = ordinal_rating_loss(f, torch.tensor([3, 0, 3, 0]), ordered_thresholds(raw))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all() and torch.isfinite(raw.grad).all()
    # Top level wants a higher score (negative gradient), bottom level a lower one.
    assert f.grad[2] < 0 < f.grad[3]


def test_ordinal_fit_recovers_the_order_of_latent_utilities():
    # Ratings 0..3 drawn from the ordered-logit model on a hidden utility; fitting scores and thresholds
    # must rank the items as the utility does.
    g = torch.Generator().manual_seed(0)
    u = torch.linspace(-3, 3, 8)
    true_th = t(-1.5, 0.0, 1.5)
    items = torch.arange(8).repeat(40)
    probs = ordinal_probs(u[items], true_th)
    levels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    f = torch.zeros(8, requires_grad=True)
    raw = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([f, raw], lr=0.1)
    for _ in range(300):
        loss, _ = ordinal_rating_loss(f[items], levels, ordered_thresholds(raw))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rho = torch.corrcoef(torch.stack([f.detach().argsort().argsort().float(), torch.arange(8.0)]))[0, 1]
    assert rho > 0.9
