"""SCAFFOLD (Karimireddy et al. 2020), the coordinator's side: the server control variate c travels with
every task, beside the model, as tensors named ``SCAFFOLD_CONTROL`` + parameter name; each hospital
trains with gradients corrected by c − c_i and returns its weights y_i and, under the same names, the
change Δc_i of its own control variate (client/scaffold.py). Then

    x ← x + η_g · (Σ n_i y_i / Σ n_i − x)        c ← c + Σ n_i Δc_i / Σ n_i

The paper averages over the sampled hospitals without weights and scales c's step by |S|/N; medfed
weights both means by the hospitals' example counts, as FedAvg does, which is the paper's rule when the
hospitals are of equal size and every hospital takes part (medfed's default). c is the strategy's
state: checkpointed with the model and resumed bit-identically. Which tensors have a control variate:
the parameters that the server optimizers move too (float, not BatchNorm's running statistics).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfed.common.limits import SCAFFOLD_CONTROL
from medfed.common.tensors import StateDict
from medfed.server.strategy import CentralRound, StrategyState
from medfed.server.strategy.fedavg import FedAvgAccumulator
from medfed.server.strategy.server_update import optimized, zeros_like_optimized


def server_control(global_state: Mapping[str, np.ndarray], state: StrategyState | None) -> dict[str, np.ndarray]:
    """c by parameter name: zeros before the first round."""
    if state is None or not state.tensors:
        return zeros_like_optimized(global_state)
    return {name: np.asarray(value) for name, value in state.tensors.items()}


class ScaffoldAccumulator(FedAvgAccumulator):
    """FedAvg's weighted mean over the model and the control changes together, then both steps."""

    def __init__(self, global_state: Mapping[str, np.ndarray], control: Mapping[str, np.ndarray], lr: float) -> None:
        super().__init__({**global_state, **{SCAFFOLD_CONTROL + k: v for k, v in control.items()}})
        self._global, self._control, self._lr = dict(global_state), dict(control), lr
        self._stepped: StateDict | None = None
        self._next = StrategyState(tensors=self._control)

    def result(self) -> StateDict:
        if self._stepped is not None:
            return self._stepped
        mean = super().result()
        out: StateDict = {}
        for name, current in self._global.items():
            average = mean.pop(name)
            if optimized(name, current.dtype) and self._lr != 1.0:
                base = current.astype(np.float64)
                average = np.asarray((base + self._lr * (average.astype(np.float64) - base)).astype(current.dtype))
            out[name] = average
        control = {}
        for name, c in self._control.items():
            change = mean.pop(SCAFFOLD_CONTROL + name)
            control[name] = np.asarray((c.astype(np.float64) + change).astype(c.dtype))
        self._next = StrategyState(tensors=control)
        self._stepped = out
        return out

    @property
    def next_state(self) -> StrategyState:
        """c after this round's step (before ``result``: c as it was)."""
        return self._next

    @property
    def central(self) -> CentralRound | None:
        return None


class Scaffold:
    name = "scaffold"

    def __init__(self, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ValueError(f"SCAFFOLD's global learning rate must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "server_lr": self.server_lr, "local_optimizer": "sgd"}

    def task_tensors(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None) -> StateDict:
        """What each task carries beside the model: c, under the wire's names."""
        return {SCAFFOLD_CONTROL + k: v for k, v in server_control(global_state, state).items()}

    def begin(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None) -> ScaffoldAccumulator:
        if clash := next((k for k in global_state if k.startswith(SCAFFOLD_CONTROL)), None):
            raise ValueError(f"the model's tensor {clash} uses SCAFFOLD's reserved prefix {SCAFFOLD_CONTROL}")
        return ScaffoldAccumulator(global_state, server_control(global_state, state), self.server_lr)
