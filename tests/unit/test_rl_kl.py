"""prefloop.rl.kl: k1 / k2 / k3 estimators (Schulman 2020) and KL controllers (Ziegler et al. 2019)."""

import math

import pytest
import torch

from prefloop.rl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3


def test_hand_example():
    # pi(a) = 0.5, pi_ref(a) = 0.25: k1 = ln 2 = 0.6931, k2 = (ln 2)^2 / 2 = 0.2402,
    # r = 0.25 / 0.5 = 0.5: k3 = (0.5 - 1) - ln 0.5 = ln 2 - 0.5 = 0.1931.
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(lp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(lp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(lp, ref).item() == pytest.approx(math.log(2) - 0.5)


def test_zero_when_equal_and_k3_non_negative():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 6, generator=g)
    for k in (kl_k1, kl_k2, kl_k3):
        assert (k(lp, lp) == 0).all()
    ref = lp + torch.randn(4, 6, generator=g) * 3
    assert (kl_k3(lp, ref) >= 0).all()
    assert (kl_k3(lp, lp + 1e-7) >= 0).all()  # expm1 keeps tiny differences non-negative


def test_monte_carlo_estimates_of_kl_between_categoricals():
    # KL(p || q) for p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]: 0.5 ln 2.5 + 0.3 ln 1 + 0.2 ln 0.4 = 0.3 ln 2.5
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = 0.3 * math.log(2.5)
    g = torch.Generator().manual_seed(0)
    a = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, ref = p.log()[a], q.log()[a]
    assert kl_k1(lp, ref).mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_k3(lp, ref).mean().item() == pytest.approx(exact, abs=0.01)
    # For nearby distributions k3 has much lower variance than k1 (the point of Schulman's note).
    q_near = torch.tensor([0.45, 0.33, 0.22])
    ref_near = q_near.log()[a]
    assert kl_k3(lp, ref_near).var() < 0.1 * kl_k1(lp, ref_near).var()


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 512)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError):
        FixedKLController(-1.0)


def test_adaptive_controller_moves_towards_target_clipped():
    # beta = 0.1, target 6, horizon 10000, n_steps 512: n/H = 0.0512.
    def after(kl):
        ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
        ctl.update(kl, 512)
        return ctl.value

    assert after(6.0) == pytest.approx(0.1)  # on target: e = 0
    assert after(6.6) == pytest.approx(0.1 * (1 + 0.1 * 0.0512))  # e = 6.6/6 - 1 = 0.1
    assert after(9.0) == pytest.approx(0.1 * (1 + 0.2 * 0.0512))  # e = 0.5, clipped to 0.2
    assert after(1e9) == pytest.approx(after(9.0))
    assert after(3.0) == pytest.approx(0.1 * (1 - 0.2 * 0.0512))  # e = -0.5, clipped to -0.2
    assert after(0.0) == pytest.approx(after(3.0))


def test_adaptive_controller_state_round_trips_and_validates():
    ctl = AdaptiveKLController(0.15, target=6.0)
    for kl in (10.0, 8.0, 2.0):
        ctl.update(kl, 256)
    fresh = AdaptiveKLController(0.15, target=6.0)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == ctl.value != 0.15
    with pytest.raises(ValueError):
        ctl.update(math.nan, 1)
    for bad in ((0.1, 0.0, 10), (0.1, 6.0, 0), (-0.1, 6.0, 10)):
        with pytest.raises(ValueError):
            AdaptiveKLController(*bad)
