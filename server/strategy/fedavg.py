"""FedAvg: global = sum(n_i * w_i) / sum(n_i), as a streaming accumulator; ``fedavg`` (the batch form)
is that same accumulator run over a list, so the streaming and the batch results cannot disagree.

Rule for non-float tensors (stated here, tested in tests/unit/server/test_fedavg.py):
- integer tensors (e.g. BatchNorm's ``num_batches_tracked``) get the same weighted mean, computed in
  float64, then rounded half to even and cast back to their dtype. Exact for values below 2**53.
- bool tensors are True where the hospitals holding True carry strictly more than half of the weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from medfed.common.tensors import StateDict, is_float
from medfed.server.strategy import (
    AggregationError,
    Stateless,
    StrategyState,
    SumAccumulator,
    check_update,
)


class FedAvgAccumulator(Stateless, SumAccumulator):
    """Running float64 sums of n_i * w_i; ``result`` divides by sum(n_i)."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        super().__init__(template)
        self._dtypes = {k: v.dtype for k, v in template.items()}
        self._result: StateDict | None = None

    def add(self, update: Mapping[str, np.ndarray], num_examples: int) -> None:
        if self._result is not None:
            raise AggregationError("this round has already been aggregated")
        check_update(self._sums, update, num_examples)
        for name, total in self._sums.items():
            total += np.multiply(update[name], num_examples, dtype=np.float64)
        self._counted(num_examples)

    def result(self) -> StateDict:
        """The average; each float64 sum is freed as soon as its tensor is done (peak: sums + one tensor)."""
        if self._result is not None:
            return self._result
        if self._num_examples == 0:
            raise AggregationError("no updates to aggregate")
        out: StateDict = {}
        for name in list(self._sums):
            mean = self._sums.pop(name)
            mean /= self._num_examples
            dtype = self._dtypes[name]
            if dtype == np.bool_:
                value = mean > 0.5
            elif is_float(dtype):
                value = mean.astype(dtype)
            else:
                value = np.rint(mean).astype(dtype)
            out[name] = np.asarray(value)  # numpy turns 0-d results (BatchNorm's counter) into scalars
        self._result = out
        return out


class FedAvg:
    """Weighted federated averaging (McMahan et al. 2017): global = sum(n_i * w_i) / sum(n_i)."""

    name = "fedavg"

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def begin(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None) -> FedAvgAccumulator:
        return FedAvgAccumulator(global_state)


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray], int]]) -> StateDict:
    """The batch form of FedAvg over (state_dict, num_examples) pairs."""
    accumulator: FedAvgAccumulator | None = None
    for update, num_examples in updates:
        if accumulator is None:
            accumulator = FedAvgAccumulator(update)
        accumulator.add(update, num_examples)
    if accumulator is None:
        raise AggregationError("no updates to aggregate")
    return accumulator.result()
