"""Aggregation strategies: pure numpy behind a small interface, one module each.

A strategy hands out an accumulator per round; each hospital's update is folded into it as soon as it
has arrived and been validated, so the coordinator never holds more than one update per upload in
flight, whatever the number of hospitals. A strategy's state (central DP's clipping bound) is explicit:
``begin`` takes the state of the round before, the accumulator gives the next one (``next_state``)
instead of the strategy changing itself, and the driver checkpoints it.

- ``fedavg``: weighted federated averaging (McMahan et al. 2017), the default.
- ``fedavgm``: FedAvg with server momentum (Hsu et al. 2019).
- ``fedopt``: FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021), over ``server_update``.
- ``fedprox``: FedAvg with a proximal term in each hospital's loss (Li et al. 2020).
- ``scaffold``: control variates against client drift (Karimireddy et al. 2020); ``fedbn``: hospitals
  keep their own normalisation layers (Li et al. 2021).
- ``median``, ``trimmed_mean``, ``krum`` over ``robust`` and ``update_store`` (every update of a round
  on disk), and ``norm_bound`` in front of any of them.
- ``central_dp``: DP-FedAvg with optional adaptive clipping (McMahan et al. 2018, Andrew et al. 2021).
- ``registry``: fed-server's settings -> a strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medfed.common.errors import MedfedError
from medfed.common.peer_text import listed, quoted
from medfed.common.tensors import StateDict


@dataclass(frozen=True)
class StrategyState:
    """What a strategy carries from round to round; it goes into every checkpoint (``values`` into
    checkpoint.json, ``tensors`` into a safetensors file beside the model), so a resumed run continues
    bit-identically."""

    values: Mapping[str, Any] = field(default_factory=dict)
    """JSON values (central DP's clipping bound, a round counter)"""
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    """model-shaped arrays (server momentum, Adam's moments)"""

    @property
    def empty(self) -> bool:
        return not self.values and not self.tensors


NO_STATE = StrategyState()


@dataclass(frozen=True)
class CentralRound:
    """What central DP did in one round, for the history and the accountant."""

    clip: float
    next_clip: float
    updates: int
    unclipped_fraction: float | None
    """noised; None without adaptive clipping"""


class AggregationError(MedfedError, ValueError):
    """An update that cannot be combined with the others (wrong tensors, no examples)."""


class Accumulator(Protocol):
    @property
    def num_updates(self) -> int: ...

    @property
    def num_examples(self) -> int: ...

    def add(self, update: Mapping[str, np.ndarray], num_examples: int) -> None: ...

    def result(self) -> StateDict:
        """The new global model; computed once (a second call returns the same)."""
        ...

    @property
    def next_state(self) -> StrategyState:
        """The strategy's state for the next round (once ``result`` has been computed)."""
        ...

    @property
    def central(self) -> CentralRound | None:
        """What central DP did this round (after ``result``); None for strategies without it."""
        ...

    def close(self) -> None:
        """Free what the round holds outside memory (a disk-backed store); idempotent."""
        ...


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """The strategy and its settings, for model.json and the report."""
        ...

    def begin(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None) -> Accumulator:
        """Start a round whose updates will be combined against ``global_state``; ``state``: the
        ``next_state`` of the round before (None for the first round)."""
        ...


@runtime_checkable
class SendsTensors(Protocol):
    """A strategy whose tasks carry tensors beside the model (SCAFFOLD's control variate)."""

    def task_tensors(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None) -> StateDict: ...


def check_update(template: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], num_examples: int) -> None:
    """Check everything about an update before any accumulator changes."""
    if num_examples <= 0:
        raise AggregationError(f"an update must come from at least one example, got {num_examples}")
    if update.keys() != template.keys():
        missing = sorted(template.keys() - update.keys())[:3]
        extra = sorted(update.keys() - template.keys())[:3]
        raise AggregationError(
            f"update tensors differ from the model (missing {listed(missing)}, unexpected {listed(extra)})"
        )
    for name, expected in template.items():
        if update[name].shape != expected.shape:
            shape = tuple(update[name].shape)
            raise AggregationError(f"tensor {quoted(name)} has shape {shape}, expected {tuple(expected.shape)}")


class Stateless:
    """For accumulators that carry nothing to the next round and run no central DP."""

    @property
    def next_state(self) -> StrategyState:
        return NO_STATE

    @property
    def central(self) -> CentralRound | None:
        return None


class SumAccumulator:
    """The part every accumulator shares: float64 sums shaped like the model, and what went into them."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._sums = {k: np.zeros(v.shape, dtype=np.float64) for k, v in template.items()}
        self._num_updates = 0
        self._num_examples = 0

    @property
    def num_updates(self) -> int:
        return self._num_updates

    @property
    def num_examples(self) -> int:
        return self._num_examples

    def _counted(self, num_examples: int) -> None:
        self._num_updates += 1
        self._num_examples += num_examples

    def close(self) -> None:
        """Nothing outside memory to free."""
