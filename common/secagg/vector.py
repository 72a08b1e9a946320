"""Between a model and the one vector secure aggregation masks: the floating-point tensors, in the
task's order, flattened; the integer ones (BatchNorm's batch counters) stay the global model's.

On the wire the masked vector is one int32 tensor named MASKED (the wire has no uint32; the bytes are
the same), so it streams and is admitted like any update.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfed.common.errors import SecureAggregationError
from medfed.common.tensors import StateDict, is_float

MASKED = "secagg.masked"


def float_names(state: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, value in state.items() if is_float(np.asarray(value).dtype)]


def length(state: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.asarray(state[name]).size) for name in float_names(state))


def difference(trained: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> np.ndarray:
    """``trained`` minus ``start`` over the floating-point tensors, flat (float64)."""
    names = float_names(start)
    if not names:
        return np.zeros(0)
    return np.concatenate(
        [(np.asarray(trained[n], dtype=np.float64) - np.asarray(start[n], dtype=np.float64)).ravel() for n in names]
    )


def apply(start: Mapping[str, np.ndarray], mean_difference: np.ndarray) -> StateDict:
    """``start`` moved by the aggregated difference (its integer tensors unchanged)."""
    if len(mean_difference) != length(start):
        raise SecureAggregationError(f"an aggregated difference of {len(mean_difference)} values for {length(start)}")
    moved: StateDict = {}
    offset = 0
    for name, value in start.items():
        array = np.asarray(value)
        if is_float(array.dtype):
            part = mean_difference[offset : offset + array.size].reshape(array.shape)
            moved[name] = (array.astype(np.float64) + part).astype(array.dtype)
            offset += array.size
        else:
            moved[name] = np.array(array, order="C")
    return moved


def as_update(masked: np.ndarray) -> StateDict:
    return {MASKED: np.asarray(masked, dtype=np.uint32).view(np.int32)}


def from_update(update: Mapping[str, np.ndarray]) -> np.ndarray:
    if set(update) != {MASKED} or np.asarray(update[MASKED]).dtype != np.int32:
        raise SecureAggregationError(f"a securely aggregated update is one int32 tensor named {MASKED}")
    return np.asarray(update[MASKED]).ravel().view(np.uint32)
