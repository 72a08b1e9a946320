"""What the robust rules share: every update of the round kept on disk (``update_store``) and the new
model computed tensor by tensor from it, each rule saying how to combine one tensor.

The robust rules weigh every hospital alike, whatever number of examples it reports: a weight a
hospital states itself is one more thing a poisoned hospital could inflate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medfed.common.tensors import StateDict, is_float
from medfed.server.strategy import AggregationError, Stateless, check_update
from medfed.server.strategy.update_store import UpdateStore


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A combined tensor back in the model's dtype: floats as they are, counters rounded half to even,
    flags True above one half (FedAvg's rules)."""
    if dtype == np.bool_:
        return np.asarray(values > 0.5)
    if is_float(dtype):
        return np.asarray(values.astype(dtype))
    return np.asarray(np.rint(values).astype(dtype))


class StoredAccumulator(Stateless):
    """Keeps each update on disk; ``combine`` (per rule) turns one tensor of all of them into one."""

    def __init__(self, store_dir: Path, global_state: Mapping[str, np.ndarray]) -> None:
        self._template = dict(global_state)
        self._store = UpdateStore(store_dir, global_state)
        self._num_examples = 0
        self._result: StateDict | None = None

    @property
    def num_updates(self) -> int:
        return self._store.count

    @property
    def num_examples(self) -> int:
        return self._num_examples

    def add(self, update: Mapping[str, np.ndarray], num_examples: int) -> None:
        if self._result is not None:
            raise AggregationError("this round has already been aggregated")
        check_update(self._template, update, num_examples)
        index = self._store.add(update)
        self._num_examples += num_examples
        self._arrived(index, update)

    def _arrived(self, index: int, update: Mapping[str, np.ndarray]) -> None:
        """Work a rule does as each update arrives (Krum's distances)."""

    def _check(self) -> None:
        """Refuse a round the rule cannot combine (too few updates)."""

    def _combine(self, name: str) -> np.ndarray:
        """Tensor ``name`` of the new model, flattened, in float64."""
        raise NotImplementedError

    def result(self) -> StateDict:
        if self._result is not None:
            return self._result
        if self._store.count == 0:
            raise AggregationError("no updates to aggregate")
        self._check()
        out: StateDict = {}
        for name, tensor in self._template.items():
            out[name] = cast_like(self._combine(name).reshape(tensor.shape), tensor.dtype)
        self._result = out
        return out

    def close(self) -> None:
        self._store.close()
