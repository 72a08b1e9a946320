import itertools

import numpy as np
import pytest

from medfed.common.tensors import StateDict
from medfed.server.strategy import AggregationError
from medfed.server.strategy.fedavg import FedAvg, fedavg


def model(seed: int) -> StateDict:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((4, 3), dtype=np.float32),
        "bn.running_mean": rng.standard_normal(4).astype(np.float16),
        "bn.num_batches_tracked": np.array(rng.integers(0, 1000), dtype=np.int64),
        "mask": rng.random(5) > 0.5,
    }


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_hand_computed_weighted_average() -> None:
    a = {"w": f32(1.0, 2.0), "steps": np.array(10)}
    b = {"w": f32(4.0, -1.0), "steps": np.array(40)}

    result = fedavg([(a, 1), (b, 2)])

    # (1*[1,2] + 2*[4,-1]) / 3 = [3, 0];  (1*10 + 2*40) / 3 = 30
    assert np.array_equal(result["w"], f32(3.0, 0.0)) and result["w"].dtype == np.float32
    assert result["steps"].item() == 30 and result["steps"].dtype == np.int64


def test_integer_buffers_round_half_to_even() -> None:
    a, b = {"n": np.array(1)}, {"n": np.array(2)}

    assert fedavg([(a, 1), (b, 1)])["n"].item() == 2  # 1.5 -> 2
    assert fedavg([({"n": np.array(2)}, 1), ({"n": np.array(3)}, 1)])["n"].item() == 2  # 2.5 -> 2
    assert fedavg([(a, 3), (b, 1)])["n"].item() == 1  # 1.25 -> 1


def test_zero_dimensional_tensors_stay_arrays_of_their_dtype() -> None:
    a = {"count": np.array(3), "flag": np.array(True), "scale": np.array(1.5, dtype=np.float32)}

    result = fedavg([(a, 1), (a, 2)])

    assert all(isinstance(v, np.ndarray) and v.shape == () and v.dtype == a[k].dtype for k, v in result.items())


def test_bool_tensors_follow_a_strict_weighted_majority() -> None:
    yes, no = {"m": np.array([True, True])}, {"m": np.array([False, True])}

    assert fedavg([(yes, 2), (no, 1)])["m"].tolist() == [True, True]
    assert fedavg([(yes, 1), (no, 1)])["m"].tolist() == [False, True]  # a tie is not a majority


def test_float64_accumulation_keeps_small_updates_from_vanishing() -> None:
    big = {"w": f32(1.0e8)}
    small = [{"w": f32(1.0)} for _ in range(1000)]

    result = fedavg([(big, 1), *((s, 1) for s in small)])

    assert result["w"].item() == pytest.approx((1.0e8 + 1000) / 1001, rel=1e-7)


def test_one_hospital_gets_its_own_model_back_exactly() -> None:
    state = model(0)

    result = fedavg([(state, 1234)])

    assert all(np.array_equal(result[k], state[k]) and result[k].dtype == state[k].dtype for k in state)


def test_equal_weights_give_the_mean() -> None:
    states = [model(i) for i in range(3)]

    result = fedavg([(s, 7) for s in states])

    expected = np.stack([s["conv.weight"].astype(np.float64) for s in states]).mean(0).astype(np.float32)
    np.testing.assert_allclose(result["conv.weight"], expected, rtol=0, atol=1e-6)


def test_order_of_hospitals_does_not_matter() -> None:
    pairs = [(model(i), n) for i, n in enumerate([5, 100, 31, 2])]

    results = [fedavg(list(order)) for order in itertools.permutations(pairs)]

    for other in results[1:]:
        for k in results[0]:
            np.testing.assert_allclose(
                results[0][k].astype(np.float64), other[k].astype(np.float64), rtol=1e-6, atol=1e-6, err_msg=k
            )


def test_streaming_accumulator_equals_the_batch_function() -> None:
    pairs = [(model(i), n) for i, n in enumerate([3, 9, 4])]
    accumulator = FedAvg().begin(pairs[0][0])

    for state, n in pairs:
        accumulator.add(state, n)

    batch = fedavg(pairs)
    assert accumulator.num_updates == 3 and accumulator.num_examples == 16
    assert all(np.array_equal(accumulator.result()[k], batch[k]) for k in batch)


def test_mismatched_updates_are_refused() -> None:
    accumulator = FedAvg().begin({"w": np.zeros(2, dtype=np.float32)})

    with pytest.raises(AggregationError, match="missing"):
        accumulator.add({"v": np.zeros(2, dtype=np.float32)}, 1)
    with pytest.raises(AggregationError, match="shape"):
        accumulator.add({"w": np.zeros(3, dtype=np.float32)}, 1)
    with pytest.raises(AggregationError, match="at least one example"):
        accumulator.add({"w": np.zeros(2, dtype=np.float32)}, 0)
    with pytest.raises(AggregationError, match="no updates"):
        accumulator.result()


def test_a_refused_update_leaves_the_running_sum_untouched() -> None:
    accumulator = FedAvg().begin({"a": np.zeros(2, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)})
    accumulator.add({"a": np.ones(2, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}, 1)

    with pytest.raises(AggregationError):
        accumulator.add({"a": np.full(2, 100.0, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}, 1)

    assert np.array_equal(accumulator.result()["a"], np.ones(2)) and accumulator.num_updates == 1


def test_the_result_is_computed_once_and_closes_the_round() -> None:
    accumulator = FedAvg().begin({"w": np.zeros(2, dtype=np.float32)})
    accumulator.add({"w": np.ones(2, dtype=np.float32)}, 3)

    first = accumulator.result()

    assert accumulator.result() is first
    with pytest.raises(AggregationError, match="already been aggregated"):
        accumulator.add({"w": np.ones(2, dtype=np.float32)}, 1)


def test_streaming_in_any_arrival_order_equals_a_separate_batch_computation() -> None:
    rng = np.random.default_rng(3)
    updates = [({"w": (rng.standard_normal(64) * 10 ** (i % 5)).astype(np.float32)}, 1 + i * 7) for i in range(12)]
    stacked = np.stack([u["w"].astype(np.float64) for u, _ in updates])
    weights = np.array([float(n) for _, n in updates])
    expected = (weights[:, None] * stacked).sum(0) / weights.sum()  # all at once, in float64
    accumulator = FedAvg().begin(updates[0][0])

    for i in rng.permutation(len(updates)).tolist():
        accumulator.add(*updates[i])

    np.testing.assert_allclose(accumulator.result()["w"].astype(np.float64), expected, rtol=2**-23, atol=0)
