"""SCAFFOLD and FedBN on the coordinator's side: against the rules written from the papers, in shuffled
arrival order, over several rounds; c is the strategy's state and resumes bit-identically."""

import random

import numpy as np
import pytest

from medfed.common.limits import SCAFFOLD_CONTROL
from medfed.server.strategy import SendsTensors
from medfed.server.strategy.fedavg import FedAvg
from medfed.server.strategy.fedbn import EVALUATION, FedBN
from medfed.server.strategy.scaffold import Scaffold

State = dict[str, np.ndarray]
RNG = np.random.default_rng(3)
GLOBAL: State = {
    "conv.weight": RNG.standard_normal((3, 2)).astype(np.float32),
    "bn.running_mean": RNG.standard_normal(2).astype(np.float32),
    "bn.num_batches_tracked": np.array(4),
}
SIZES = (10, 30, 60)


def hospital_updates(round_number: int, task: State) -> list[tuple[State, int]]:
    """Weights moved from the task's, and a change of each hospital's control variate."""
    rng = np.random.default_rng(round_number)
    out = []
    for n in SIZES:
        update = {k: (v + rng.standard_normal(v.shape) * 0.1).astype(v.dtype) if v.dtype.kind == "f" else v
                  for k, v in task.items() if not k.startswith(SCAFFOLD_CONTROL)}  # fmt: skip
        update[SCAFFOLD_CONTROL + "conv.weight"] = rng.standard_normal((3, 2)).astype(np.float32)
        out.append((update, n))
    return out


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_scaffold_moves_the_model_and_c_by_the_weighted_means_whatever_the_arrival_order(server_lr: float) -> None:
    strategy = Scaffold(server_lr)
    model, state = dict(GLOBAL), None
    x, c = {k: v.astype(np.float64) for k, v in GLOBAL.items()}, np.zeros((3, 2))
    for r in range(1, 4):
        task = {**model, **strategy.task_tensors(model, state)}
        np.testing.assert_allclose(task[SCAFFOLD_CONTROL + "conv.weight"], c, rtol=1e-6)
        assert SCAFFOLD_CONTROL + "bn.running_mean" not in task  # statistics have no control variate
        updates = hospital_updates(r, task)
        accumulator = strategy.begin(model, state)
        for update, n in random.Random(r).sample(updates, len(updates)):
            accumulator.add(update, n)
        model, state = accumulator.result(), accumulator.next_state

        total = sum(SIZES)
        mean = {k: sum(u[k].astype(np.float64) * n for u, n in updates) / total for k in updates[0][0]}
        x["conv.weight"] += server_lr * (mean["conv.weight"] - x["conv.weight"])
        x["bn.running_mean"] = mean["bn.running_mean"]  # statistics take the mean as it is
        c += mean[SCAFFOLD_CONTROL + "conv.weight"]
        assert model.keys() == GLOBAL.keys()  # the new global model holds no control variate
        np.testing.assert_allclose(model["conv.weight"], x["conv.weight"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model["bn.running_mean"], x["bn.running_mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.tensors["conv.weight"], c, rtol=1e-5, atol=1e-6)


def test_an_update_without_the_control_variates_change_is_refused() -> None:
    accumulator = Scaffold().begin(GLOBAL)
    update, n = hospital_updates(1, GLOBAL)[0]
    del update[SCAFFOLD_CONTROL + "conv.weight"]

    with pytest.raises(ValueError, match="missing"):
        accumulator.add(update, n)


def test_only_scaffold_sends_tensors_beside_the_model() -> None:
    assert isinstance(Scaffold(), SendsTensors)
    assert not isinstance(FedAvg(), SendsTensors) and not isinstance(FedBN(), SendsTensors)


def test_fedbn_averages_like_fedavg_and_says_how_its_global_model_is_evaluated() -> None:
    updates = [({k: (v + i).astype(v.dtype) for k, v in GLOBAL.items()}, n) for i, n in enumerate(SIZES)]
    results = []
    for strategy in (FedBN(), FedAvg()):
        accumulator = strategy.begin(GLOBAL)
        for update, n in updates:
            accumulator.add(update, n)
        results.append(accumulator.result())

    for name in GLOBAL:
        np.testing.assert_array_equal(results[0][name], results[1][name])
    assert FedBN().describe() == {"name": "fedbn", "evaluation": EVALUATION}
