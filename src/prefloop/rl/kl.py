"""KL estimators from samples and KL-coefficient controllers.

Estimators: Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html. With
tokens sampled from pi and r = pi_ref(a) / pi(a), each of k1, k2, k3 is a per-token estimate of
KL(pi || pi_ref): k1 = -log r (unbiased, high variance, can be negative), k2 = (log r)^2 / 2 (biased, low
variance), k3 = (r - 1) - log r (unbiased, non-negative). Controllers: Ziegler et al. 2019, section 2.2.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(a) - log pi_ref(a), elementwise; (B, T) -> (B, T). The per-token KL penalty (docs/ppo.md 13)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi(a) - log pi_ref(a))^2, elementwise; (B, T) -> (B, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with log r = log pi_ref(a) - log pi(a), elementwise; (B, T) -> (B, T).

    Non-negative since e^x >= 1 + x; expm1 keeps it accurate when the two log-probs are close.
    """
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


class KLController(Protocol):
    """What the PPO recipe needs from a KL coefficient: its value, an update per rollout batch, and state."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedKLController:
    """A constant KL coefficient beta (the N+ TL;DR setting, 0.05)."""

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, eq. in section 2.2), a proportional controller.

    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon), where KL is the mean
    per-sequence KL of the last rollout batch and n_steps the number of episodes in it. The target and the
    horizon come from the configuration; only beta is state.
    """

    def __init__(self, init_beta: float, target: float, horizon: int = 10000) -> None:
        if init_beta < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {init_beta}")
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"KL horizon must be > 0, got {horizon}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta towards keeping the KL at the target, by at most 20% of n_steps / horizon."""
        if current_kl != current_kl:  # nan: the run has diverged; do not let it hide in beta
            raise ValueError("KL is nan; cannot update the KL coefficient")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
