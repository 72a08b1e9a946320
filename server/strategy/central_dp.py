"""Central differential privacy: DP-FedAvg with optional adaptive clipping.

The coordinator clips each hospital's update Δ_i = w_i − global to L2 norm C, sums them with equal
weight, adds N(0, (σC)²) to the sum and divides by the number of updates (McMahan et al. 2018). Equal
weights, not FedAvg's n_i: with n_i-weighting one hospital's influence would grow with the example
count it reports itself, and the sensitivity C would no longer hold. The set of hospitals taking
part is treated as public (they are known to each other and to the coordinator).

Adaptive clipping (Andrew et al. 2021) follows a quantile of the update norms: each round the
coordinator counts the updates that needed no clipping, adds noise to that count, and moves C
geometrically towards the target quantile. That count is a second release; it takes 5% of the
privacy (in 1/σ² terms), so the update's multiplier becomes σ/√0.95 and the count's σ/√0.05, and
together they are worth exactly one Gaussian release with multiplier σ.

Pure functions over tensors; no transport here. The clipping bound C is the strategy's state: a round
begins with the bound of the round before and its accumulator gives the next (``next_state``), so the
strategy itself never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfed.common.dp.accounting import Spend
from medfed.common.dp.mechanisms import add_gaussian_noise, apply_update, clip_update, difference, secure_generator
from medfed.common.tensors import StateDict, is_float
from medfed.server.strategy import AggregationError, CentralRound, StrategyState, SumAccumulator, check_update

COUNT_SHARE = 0.05


@dataclass(frozen=True)
class AdaptiveClipping:
    target_quantile: float = 0.5
    learning_rate: float = 0.2


class DpFedAvg:
    name = "dp-fedavg"

    def __init__(
        self,
        clip: float,
        noise_multiplier: float,
        *,
        adaptive: AdaptiveClipping | None = None,
        generator: Callable[[], np.random.Generator] = secure_generator,
    ) -> None:
        if not (clip > 0 and noise_multiplier >= 0):
            raise ValueError("central DP needs C > 0 and σ ≥ 0")
        self.initial_clip = clip
        self.noise_multiplier = noise_multiplier
        self.adaptive = adaptive
        self._generator = generator
        split = adaptive is not None and noise_multiplier > 0
        self.update_noise_multiplier = noise_multiplier / math.sqrt(1 - COUNT_SHARE) if split else noise_multiplier
        self.count_noise_multiplier = noise_multiplier / math.sqrt(COUNT_SHARE) if split else None

    def spend(self) -> Spend:
        """One round's release, for the accountant."""
        return Spend(
            mechanism="central",
            noise_multiplier=self.update_noise_multiplier,
            count_noise_multiplier=self.count_noise_multiplier,
        )

    def begin(self, global_state: Mapping[str, np.ndarray], state: StrategyState | None = None) -> DpAccumulator:
        clip = float(state.values["clip"]) if state is not None and "clip" in state.values else self.initial_clip
        return DpAccumulator(self, global_state, clip)

    def settle(
        self, clip: float, unclipped: int, updates: int, generator: np.random.Generator
    ) -> tuple[float, float | None]:
        """After a round with bound ``clip``: the next C and the noised fraction of updates that needed no
        clipping."""
        if self.adaptive is None:
            return clip, None
        std = (self.count_noise_multiplier or 0.0) / 2  # centred counts: one hospital moves the sum by 1/2
        noise = float(generator.normal(0.0, std)) if std else 0.0
        fraction = (unclipped - updates / 2 + noise) / updates + 0.5
        return clip * math.exp(-self.adaptive.learning_rate * (fraction - self.adaptive.target_quantile)), fraction

    def describe(self, clip: float | None = None) -> dict[str, Any]:
        """The mechanism and its settings (``clip``: this round's bound; the initial one by default)."""
        clip = self.initial_clip if clip is None else clip
        out: dict[str, Any] = {"mechanism": "central", "clip": clip, "noise_multiplier": self.noise_multiplier}
        if self.adaptive is not None:
            out["adaptive_clipping"] = {
                "target_quantile": self.adaptive.target_quantile,
                "learning_rate": self.adaptive.learning_rate,
                "count_share": COUNT_SHARE,
            }
        return out


class DpAccumulator(SumAccumulator):
    """Running sum of clipped updates; ``result`` adds the noise once and moves the clipping bound."""

    def __init__(self, strategy: DpFedAvg, global_state: Mapping[str, np.ndarray], clip: float) -> None:
        super().__init__(global_state)
        self._strategy = strategy
        self._clip = clip
        self._global = dict(global_state)
        self._unclipped = 0
        self._result: StateDict | None = None
        self._round: CentralRound | None = None

    def add(self, update: Mapping[str, np.ndarray], num_examples: int) -> None:
        if self._result is not None:
            raise AggregationError("this round's aggregate has already been released")
        check_update(self._sums, update, num_examples)
        clipped, norm = clip_update(difference(update, self._global), self._clip)
        for name, value in clipped.items():
            self._sums[name] += value
        self._unclipped += norm <= self._clip
        self._counted(num_examples)

    def result(self) -> StateDict:
        """The noised mean update applied to the global model; computed once (noise is drawn once)."""
        if self._result is not None:
            return self._result
        if self._num_updates == 0:
            raise AggregationError("no updates to aggregate")
        generator = self._strategy._generator()
        floats = {k: v for k, v in self._sums.items() if is_float(self._global[k].dtype)}
        noised = add_gaussian_noise(floats, self._strategy.update_noise_multiplier * self._clip, generator)
        mean = {k: v / self._num_updates for k, v in noised.items()}
        self._result = apply_update(self._global, mean)
        next_clip, fraction = self._strategy.settle(self._clip, self._unclipped, self._num_updates, generator)
        self._round = CentralRound(self._clip, next_clip, self._num_updates, fraction)
        return self._result

    @property
    def next_state(self) -> StrategyState:
        return StrategyState(values={"clip": self._round.next_clip if self._round is not None else self._clip})

    @property
    def central(self) -> CentralRound | None:
        return self._round
