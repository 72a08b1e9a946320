"""DP-FedAvg on the coordinator (medfed.server.strategy.central_dp): clipping, noise, adaptive clipping."""

import math

import numpy as np
import pytest

from medfed.common.dp.mechanisms import l2_norm
from medfed.common.tensors import StateDict
from medfed.server.strategy import AggregationError
from medfed.server.strategy.central_dp import AdaptiveClipping, DpFedAvg


def seeded() -> np.random.Generator:
    return np.random.default_rng(0)


GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.ones(3, dtype=np.float32)}


def shifted(amount: float) -> StateDict:
    return {k: v + np.float32(amount) for k, v in GLOBAL.items()}


def test_without_noise_and_clipping_it_is_the_equal_weight_mean() -> None:
    strategy = DpFedAvg(clip=1e9, noise_multiplier=0.0, generator=seeded)
    accumulator = strategy.begin(GLOBAL)

    accumulator.add(shifted(1.0), 10)
    accumulator.add(shifted(3.0), 1000)  # example counts do not weigh under central DP
    result = accumulator.result()

    np.testing.assert_allclose(result["w"], np.full((4, 3), 2.0))
    np.testing.assert_allclose(result["b"], np.full(3, 3.0))
    assert result["w"].dtype == np.float32


def test_each_update_moves_the_mean_by_at_most_clip_over_m() -> None:
    strategy = DpFedAvg(clip=0.5, noise_multiplier=0.0, generator=seeded)
    accumulator = strategy.begin(GLOBAL)

    accumulator.add(shifted(100.0), 5)
    result = accumulator.result()

    moved = l2_norm({k: result[k] - GLOBAL[k] for k in GLOBAL})
    assert moved == pytest.approx(0.5, rel=1e-6)


def test_noise_on_the_sum_has_std_sigma_clip_over_m() -> None:
    big = {"w": np.zeros(200_000, dtype=np.float32)}
    strategy = DpFedAvg(clip=2.0, noise_multiplier=1.5, generator=seeded)
    accumulator = strategy.begin(big)
    for _ in range(4):
        accumulator.add(big, 1)  # zero updates: all that moves the model is the noise

    result = accumulator.result()

    assert float(result["w"].std()) == pytest.approx(2.0 * 1.5 / 4, rel=0.01)


def test_result_is_released_once() -> None:
    accumulator = DpFedAvg(clip=1.0, noise_multiplier=1.0).begin(GLOBAL)
    accumulator.add(shifted(0.1), 1)

    first = accumulator.result()

    assert accumulator.result() is first  # asking twice must not draw (and leak) a second noise sample
    with pytest.raises(AggregationError, match="already been released"):
        accumulator.add(shifted(0.1), 1)


def test_adaptive_clipping_shrinks_c_when_updates_are_small_and_grows_it_when_large() -> None:
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2)
    small = DpFedAvg(clip=1.0, noise_multiplier=0.0, adaptive=adaptive, generator=seeded)
    large = DpFedAvg(clip=1.0, noise_multiplier=0.0, adaptive=adaptive, generator=seeded)

    next_clip = {}
    for strategy, amount in ((small, 0.01), (large, 10.0)):
        accumulator = strategy.begin(GLOBAL)
        accumulator.add(shifted(amount), 1)
        accumulator.add(shifted(amount), 1)
        accumulator.result()
        next_clip[amount] = accumulator.next_state.values["clip"]

    assert next_clip[0.01] == pytest.approx(math.exp(-0.2 * (1.0 - 0.5)))  # every update unclipped
    assert next_clip[10.0] == pytest.approx(math.exp(-0.2 * (0.0 - 0.5)))  # every update clipped
    assert small.initial_clip == large.initial_clip == 1.0  # the strategy itself is unchanged


def test_a_round_begins_with_the_clipping_bound_the_round_before_gave() -> None:
    strategy = DpFedAvg(clip=1.0, noise_multiplier=0.0, adaptive=AdaptiveClipping(), generator=seeded)
    first = strategy.begin(GLOBAL)
    first.add(shifted(10.0), 1)
    first.result()

    second = strategy.begin(GLOBAL, first.next_state)
    second.add(shifted(10.0), 1)
    second.result()

    assert second.central is not None and first.central is not None
    assert second.central.clip == first.central.next_clip == first.next_state.values["clip"] > 1.0


def test_adaptive_clipping_splits_the_noise_so_the_total_is_one_release_of_sigma() -> None:
    strategy = DpFedAvg(clip=1.0, noise_multiplier=1.2, adaptive=AdaptiveClipping())

    spend = strategy.spend()

    assert spend.count_noise_multiplier is not None
    assert spend.noise_multiplier**-2 + spend.count_noise_multiplier**-2 == pytest.approx(1.2**-2)


def test_mismatched_updates_are_refused_before_anything_changes() -> None:
    accumulator = DpFedAvg(clip=1e9, noise_multiplier=0.0, generator=seeded).begin(GLOBAL)
    accumulator.add(shifted(0.5), 1)

    with pytest.raises(AggregationError, match="shape"):
        accumulator.add({"w": np.zeros((3, 4), dtype=np.float32), "b": np.ones(3, dtype=np.float32)}, 1)

    assert accumulator.num_updates == 1
    np.testing.assert_allclose(accumulator.result()["b"], np.full(3, 1.5))
