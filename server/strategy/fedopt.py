"""FedAdam, FedYogi and FedAdagrad: adaptive server optimizers (Reddi et al. 2021, "Adaptive
Federated Optimization", Algorithm 2).

The server treats FedAvg's step Δ = mean − global as a pseudo-gradient and applies it with a first
moment m and a second moment v per coordinate:

    m ← β1·m + (1 − β1)·Δ
    v ← v + Δ²                                  (FedAdagrad)
    v ← β2·v + (1 − β2)·Δ²                      (FedAdam)
    v ← v − (1 − β2)·Δ²·sign(v − Δ²)            (FedYogi)
    global ← global + η·m / (√v + τ)

with m starting at 0 and v at τ², as in the paper (no bias correction). τ bounds the step where v is
small; η is the server learning rate. Hospitals with different data pull coordinates in different
directions; the per-coordinate scale keeps the rarely moved ones from being drowned out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from medfed.server.strategy import StrategyState
from medfed.server.strategy.server_update import ServerStepAccumulator, zeros_like_optimized

Variant = Literal["fedadam", "fedyogi", "fedadagrad"]


class FedOpt:
    def __init__(
        self,
        variant: Variant,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if not (server_lr > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1 and tau > 0):
            raise ValueError(f"{variant} needs η > 0, β1 and β2 in [0, 1) and τ > 0")
        self.name: str = variant
        self.variant = variant
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau

    def begin(
        self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None
    ) -> ServerStepAccumulator:
        if state is not None and state.tensors:
            buffers = dict(state.tensors)
        else:
            first = {f"m.{k}": v for k, v in zeros_like_optimized(global_state).items()}
            second = {f"v.{k}": v for k, v in zeros_like_optimized(global_state, self.tau**2).items()}
            buffers = {**first, **second}

        def step(name: str, delta: np.ndarray) -> np.ndarray:
            m, v = buffers[f"m.{name}"], buffers[f"v.{name}"]
            m *= self.beta1
            m += (1 - self.beta1) * delta
            squared = delta * delta
            if self.variant == "fedadagrad":
                v += squared
            elif self.variant == "fedadam":
                v *= self.beta2
                v += (1 - self.beta2) * squared
            else:
                v -= (1 - self.beta2) * squared * np.sign(v.astype(np.float64) - squared)
            return self.server_lr * m.astype(np.float64) / (np.sqrt(v.astype(np.float64)) + self.tau)

        return ServerStepAccumulator(global_state, StrategyState({}, buffers), step)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "server_lr": self.server_lr, "server_beta1": self.beta1,
                "server_beta2": self.beta2, "server_tau": self.tau}  # fmt: skip
