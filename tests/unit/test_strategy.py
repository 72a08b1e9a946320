import itertools

import pytest
import torch

from medfed.server.strategy import AggregationError, FedAvg, fedavg


def model(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, generator=gen),
        "bn.running_mean": torch.randn(4, generator=gen).to(torch.float16),
        "bn.num_batches_tracked": torch.randint(0, 1000, (), generator=gen),
        "mask": torch.rand(5, generator=gen) > 0.5,
    }


def test_hand_computed_weighted_average() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(10)}
    b = {"w": torch.tensor([4.0, -1.0]), "steps": torch.tensor(40)}

    result = fedavg([(a, 1), (b, 2)])

    # (1*[1,2] + 2*[4,-1]) / 3 = [3, 0];  (1*10 + 2*40) / 3 = 30
    assert torch.equal(result["w"], torch.tensor([3.0, 0.0]))
    assert result["steps"].item() == 30 and result["steps"].dtype == torch.int64


def test_integer_buffers_round_half_to_even() -> None:
    a, b = {"n": torch.tensor(1)}, {"n": torch.tensor(2)}

    assert fedavg([(a, 1), (b, 1)])["n"].item() == 2  # 1.5 -> 2
    assert fedavg([({"n": torch.tensor(2)}, 1), ({"n": torch.tensor(3)}, 1)])["n"].item() == 2  # 2.5 -> 2
    assert fedavg([(a, 3), (b, 1)])["n"].item() == 1  # 1.25 -> 1


def test_bool_tensors_follow_a_strict_weighted_majority() -> None:
    yes, no = {"m": torch.tensor([True, True])}, {"m": torch.tensor([False, True])}

    assert fedavg([(yes, 2), (no, 1)])["m"].tolist() == [True, True]
    assert fedavg([(yes, 1), (no, 1)])["m"].tolist() == [False, True]  # a tie is not a majority


def test_float64_accumulation_keeps_small_updates_from_vanishing() -> None:
    big = {"w": torch.tensor([1.0e8], dtype=torch.float32)}
    small = [{"w": torch.tensor([1.0], dtype=torch.float32)} for _ in range(1000)]

    result = fedavg([(big, 1), *((s, 1) for s in small)])

    assert result["w"].item() == pytest.approx((1.0e8 + 1000) / 1001, rel=1e-7)


def test_one_hospital_gets_its_own_model_back_exactly() -> None:
    state = model(0)

    result = fedavg([(state, 1234)])

    assert all(torch.equal(result[k], state[k]) and result[k].dtype == state[k].dtype for k in state)


def test_equal_weights_give_the_mean() -> None:
    states = [model(i) for i in range(3)]

    result = fedavg([(s, 7) for s in states])

    expected = torch.stack([s["conv.weight"].double() for s in states]).mean(0).float()
    assert torch.allclose(result["conv.weight"], expected, rtol=0, atol=1e-6)


def test_order_of_hospitals_does_not_matter() -> None:
    pairs = [(model(i), n) for i, n in enumerate([5, 100, 31, 2])]

    results = [fedavg(list(order)) for order in itertools.permutations(pairs)]

    for other in results[1:]:
        for k in results[0]:
            assert torch.allclose(results[0][k].double(), other[k].double(), rtol=1e-6, atol=1e-6), k


def test_streaming_accumulator_equals_the_batch_function() -> None:
    pairs = [(model(i), n) for i, n in enumerate([3, 9, 4])]
    accumulator = FedAvg().begin(pairs[0][0])

    for state, n in pairs:
        accumulator.add(state, n)

    batch = fedavg(pairs)
    assert accumulator.num_updates == 3 and accumulator.num_examples == 16
    assert all(torch.equal(accumulator.result()[k], batch[k]) for k in batch)


def test_mismatched_updates_are_refused() -> None:
    accumulator = FedAvg().begin({"w": torch.zeros(2)})

    with pytest.raises(AggregationError, match="missing"):
        accumulator.add({"v": torch.zeros(2)}, 1)
    with pytest.raises(AggregationError, match="shape"):
        accumulator.add({"w": torch.zeros(3)}, 1)
    with pytest.raises(AggregationError, match="at least one example"):
        accumulator.add({"w": torch.zeros(2)}, 0)
    with pytest.raises(AggregationError, match="no updates"):
        accumulator.result()


def test_a_refused_update_leaves_the_running_sum_untouched() -> None:
    accumulator = FedAvg().begin({"a": torch.zeros(2), "b": torch.zeros(2)})
    accumulator.add({"a": torch.ones(2), "b": torch.ones(2)}, 1)

    with pytest.raises(AggregationError):
        accumulator.add({"a": torch.full((2,), 100.0), "b": torch.zeros(3)}, 1)  # "a" fits, "b" does not

    assert torch.equal(accumulator.result()["a"], torch.ones(2)) and accumulator.num_updates == 1


def test_the_result_is_computed_once_and_closes_the_round() -> None:
    accumulator = FedAvg().begin({"w": torch.zeros(2)})
    accumulator.add({"w": torch.ones(2)}, 3)

    first = accumulator.result()

    assert accumulator.result() is first
    with pytest.raises(AggregationError, match="already been aggregated"):
        accumulator.add({"w": torch.ones(2)}, 1)


def test_streaming_in_any_arrival_order_equals_a_separate_batch_computation() -> None:
    generator = torch.Generator().manual_seed(3)
    updates = [({"w": torch.randn(64, generator=generator) * 10 ** (i % 5)}, 1 + i * 7) for i in range(12)]
    stacked = torch.stack([u["w"].double() for u, _ in updates])
    weights = torch.tensor([float(n) for _, n in updates], dtype=torch.float64)
    expected = (weights[:, None] * stacked).sum(0) / weights.sum()  # all at once, in float64
    accumulator = FedAvg().begin(updates[0][0])

    for i in torch.randperm(len(updates), generator=generator).tolist():
        accumulator.add(*updates[i])

    assert torch.allclose(accumulator.result()["w"].double(), expected, rtol=2**-23, atol=0)
