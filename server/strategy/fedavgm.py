"""FedAvgM: FedAvg with server momentum (Hsu et al. 2019, "Measuring the effects of non-identical data
distribution for federated visual classification").

Each round the server takes FedAvg's step Δ = mean − global into a momentum buffer, v ← βv + Δ, and
moves the model by η·v. With β = 0 and η = 1 it is FedAvg exactly. Momentum carries a direction over
rounds, which damps the round-to-round swings that hospitals with different label mixes cause.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfed.server.strategy import StrategyState
from medfed.server.strategy.server_update import ServerStepAccumulator, zeros_like_optimized


class FedAvgM:
    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        if not (server_lr > 0 and 0 <= momentum < 1):
            raise ValueError("FedAvgM needs a server learning rate > 0 and a momentum in [0, 1)")
        self.server_lr = server_lr
        self.momentum = momentum

    def begin(
        self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None
    ) -> ServerStepAccumulator:
        velocity = dict(state.tensors) if state is not None and state.tensors else zeros_like_optimized(global_state)

        def step(name: str, delta: np.ndarray) -> np.ndarray:
            buffer = velocity[name]
            buffer *= self.momentum
            buffer += delta
            return self.server_lr * buffer.astype(np.float64)

        return ServerStepAccumulator(global_state, StrategyState({}, velocity), step)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "server_lr": self.server_lr, "server_momentum": self.momentum}
