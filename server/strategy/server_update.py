"""What the server-optimizer strategies (FedAvgM, FedAdam, FedYogi, FedAdagrad) share: the round's
weighted mean, as FedAvg computes it, taken as a step Δ = mean − global that the server then applies
with its own optimizer, tensor by tensor, so that no float64 copy of the whole model exists at once.

Which tensors the server optimizer moves: the float parameters. BatchNorm's running statistics
(``*running_mean``, ``*running_var``) and every non-float tensor (``*num_batches_tracked``) take the
weighted mean as it is: they are statistics of the data, not parameters, and a momentum or Adam step
could drive a variance below zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from medfed.common.tensors import StateDict, is_float
from medfed.server.strategy import CentralRound, StrategyState
from medfed.server.strategy.fedavg import FedAvgAccumulator

STATISTICS = ("running_mean", "running_var")

Step = Callable[[str, np.ndarray], np.ndarray]
"""(tensor name, Δ in float64) -> what to add to the global tensor, in float64"""


def optimized(name: str, dtype: np.dtype) -> bool:
    """Whether the server optimizer moves this tensor (otherwise it takes the weighted mean)."""
    return is_float(dtype) and not name.endswith(STATISTICS)


class ServerStepAccumulator(FedAvgAccumulator):
    """FedAvg's weighted mean, then ``global + step(name, mean − global)`` for the optimized tensors.

    ``step`` updates the optimizer's buffers in ``state.tensors`` in place (a model-sized copy fewer),
    so the state handed to ``begin`` belongs to the round from then on and is also its next state."""

    def __init__(self, global_state: Mapping[str, np.ndarray], state: StrategyState, step: Step) -> None:
        super().__init__(global_state)
        self._global = dict(global_state)
        self._state = state
        self._step = step
        self._stepped: StateDict | None = None

    def result(self) -> StateDict:
        if self._stepped is not None:
            return self._stepped
        mean = super().result()
        out: StateDict = {}
        for name in list(mean):
            average = mean.pop(name)
            current = self._global[name]
            if optimized(name, current.dtype):
                base = current.astype(np.float64)
                moved = base + self._step(name, average.astype(np.float64) - base)
                out[name] = np.asarray(moved.astype(current.dtype))
            else:
                out[name] = average
        self._stepped = out
        return out

    @property
    def next_state(self) -> StrategyState:
        """The optimizer's buffers, stepped once ``result`` has run."""
        return self._state

    @property
    def central(self) -> CentralRound | None:
        return None


def zeros_like_optimized(global_state: Mapping[str, np.ndarray], value: float = 0.0) -> dict[str, np.ndarray]:
    """A float32 buffer for each optimized tensor (momentum, moments), filled with ``value``."""
    return {
        name: np.full(tensor.shape, value, dtype=np.float32)
        for name, tensor in global_state.items()
        if optimized(name, tensor.dtype)
    }
