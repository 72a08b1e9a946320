"""Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?"): each update's
difference from the global model is scaled down to L2 norm at most B before the strategy behind it
sees it. A hospital that multiplies its model by 100 then moves the average no further than an honest
one may; the price is slower progress if B is below honest updates' norms. On its own
(``--strategy norm-bound``) it is in front of FedAvg; with ``--norm-bound B`` it stands in front of
any other strategy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfed.common.dp.mechanisms import clip_update, difference
from medfed.common.tensors import StateDict
from medfed.server.strategy import Accumulator, CentralRound, Strategy, StrategyState, check_update


class NormBoundAccumulator:
    def __init__(self, inner: Accumulator, global_state: Mapping[str, np.ndarray], bound: float) -> None:
        self._inner, self._global, self._bound = inner, dict(global_state), bound

    @property
    def num_updates(self) -> int:
        return self._inner.num_updates

    @property
    def num_examples(self) -> int:
        return self._inner.num_examples

    def add(self, update: Mapping[str, np.ndarray], num_examples: int) -> None:
        check_update(self._global, update, num_examples)
        clipped, _ = clip_update(difference(update, self._global), self._bound)
        bounded: StateDict = {}
        for name, value in update.items():
            base = self._global[name]
            bounded[name] = (
                np.asarray((base.astype(np.float64) + clipped[name]).astype(base.dtype)) if name in clipped else value
            )
        self._inner.add(bounded, num_examples)

    def result(self) -> StateDict:
        return self._inner.result()

    @property
    def next_state(self) -> StrategyState:
        return self._inner.next_state

    @property
    def central(self) -> CentralRound | None:
        return self._inner.central

    def close(self) -> None:
        self._inner.close()


class NormBound:
    def __init__(self, inner: Strategy, bound: float, *, alone: bool = False) -> None:
        if not bound > 0:
            raise ValueError(f"the norm bound must be positive, got {bound}")
        self._inner, self.bound = inner, bound
        self.name = "norm-bound" if alone else f"norm-bound+{inner.name}"

    def describe(self) -> dict[str, object]:
        return {**self._inner.describe(), "name": self.name, "norm_bound": self.bound}

    def begin(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None) -> NormBoundAccumulator:
        return NormBoundAccumulator(self._inner.begin(global_state, state), global_state, self.bound)
