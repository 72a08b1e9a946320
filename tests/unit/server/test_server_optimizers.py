"""FedAvgM and the adaptive server optimizers (FedAdam, FedYogi, FedAdagrad) against oracles written
from their papers' update rules, over several rounds, and resumed from a checkpoint bit-identically."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medfed.server.run_dir import CHECKPOINT_MODEL, Checkpoint, RunDir
from medfed.server.strategy import Strategy, StrategyState
from medfed.server.strategy.fedavg import fedavg
from medfed.server.strategy.fedavgm import FedAvgM
from medfed.server.strategy.fedopt import FedOpt

State = dict[str, np.ndarray]
RNG = np.random.default_rng(7)
GLOBAL: State = {
    "conv.weight": RNG.standard_normal((3, 2)).astype(np.float32),
    "bn.running_var": np.abs(RNG.standard_normal(2)).astype(np.float32) + 0.5,
    "bn.num_batches_tracked": np.array(10),
}


def updates_for(round_number: int, current: State) -> list[tuple[State, int]]:
    """Three hospitals that each move the model their own way (different every round)."""
    rng = np.random.default_rng(round_number)
    out = []
    for n in (10, 30, 60):
        update = {k: (v + rng.standard_normal(v.shape) * 0.1).astype(v.dtype) for k, v in sorted(current.items())}
        update["bn.num_batches_tracked"] = np.array(int(current["bn.num_batches_tracked"]) + n)
        out.append((update, n))
    return out


def run_rounds(
    strategy: Strategy, rounds: int, start: State = GLOBAL, state: StrategyState | None = None
) -> tuple[State, StrategyState | None]:
    current = dict(start)
    for r in range(1, rounds + 1):
        accumulator = strategy.begin(current, state)
        for update, n in updates_for(r, current):
            accumulator.add(update, n)
        current = accumulator.result()
        state = accumulator.next_state
    return current, state


def oracle(rounds: int, step: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]) -> State:
    """The paper's rule in float64: Δ = FedAvg's mean − global for the weight; statistics and counters
    take the mean itself."""
    current = dict(GLOBAL)
    buffers: dict[str, np.ndarray] = {}
    for r in range(1, rounds + 1):
        mean = fedavg(updates_for(r, current))
        delta = mean["conv.weight"].astype(np.float64) - current["conv.weight"]
        moved = current["conv.weight"] + step(delta, buffers)
        current = {**mean, "conv.weight": moved.astype(np.float32)}
    return current


def test_fedavgm_without_momentum_and_with_rate_one_is_fedavg_exactly() -> None:
    got, _ = run_rounds(FedAvgM(server_lr=1.0, momentum=0.0), 1)

    expected = fedavg(updates_for(1, GLOBAL))
    for name in GLOBAL:
        np.testing.assert_array_equal(got[name], expected[name])


def test_fedavgm_follows_hsu_et_al() -> None:
    def step(delta: np.ndarray, b: dict[str, np.ndarray]) -> np.ndarray:
        b["v"] = 0.9 * b.get("v", np.zeros_like(delta)) + delta
        return 0.5 * b["v"]

    got, _ = run_rounds(FedAvgM(server_lr=0.5, momentum=0.9), 4)

    np.testing.assert_allclose(got["conv.weight"], oracle(4, step)["conv.weight"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["fedadam", "fedyogi", "fedadagrad"])
def test_the_adaptive_optimizers_follow_reddi_et_al(variant: str) -> None:
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3

    def step(delta: np.ndarray, b: dict[str, np.ndarray]) -> np.ndarray:
        m = b.get("m", np.zeros_like(delta))
        v = b.get("v", np.full_like(delta, tau**2))
        m = b1 * m + (1 - b1) * delta
        if variant == "fedadagrad":
            v = v + delta**2
        elif variant == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        b["m"], b["v"] = m, v
        return lr * m / (np.sqrt(v) + tau)

    got, state = run_rounds(FedOpt(variant, server_lr=lr, beta1=b1, beta2=b2, tau=tau), 4)  # type: ignore[arg-type]

    np.testing.assert_allclose(got["conv.weight"], oracle(4, step)["conv.weight"], rtol=1e-5, atol=1e-6)
    assert state is not None and set(state.tensors) == {"m.conv.weight", "v.conv.weight"}


@pytest.mark.parametrize("strategy", [FedAvgM(), FedOpt("fedadam", server_lr=0.1)], ids=["fedavgm", "fedadam"])
def test_batchnorm_statistics_and_counters_take_the_weighted_mean(strategy: Strategy) -> None:
    got, _ = run_rounds(strategy, 1)

    expected = fedavg(updates_for(1, GLOBAL))
    np.testing.assert_array_equal(got["bn.running_var"], expected["bn.running_var"])
    assert got["bn.num_batches_tracked"] == expected["bn.num_batches_tracked"]


@pytest.mark.parametrize(
    "make", [lambda: FedAvgM(server_lr=0.7), lambda: FedOpt("fedyogi", server_lr=0.05)], ids=["fedavgm", "fedyogi"]
)
def test_a_run_resumed_from_its_checkpoint_continues_bit_identically(
    tmp_path: Path, make: Callable[[], Strategy]
) -> None:
    uninterrupted, _ = run_rounds(make(), 4)

    halfway, state = run_rounds(make(), 2)
    run_dir = RunDir(tmp_path)
    checkpoint = Checkpoint(round=2, model_file=CHECKPOINT_MODEL.format(2), federation_id="f", data={}, settings={},
                            rng_state=[], strategy={}, privacy={}, last_eval={})  # fmt: skip
    run_dir.save_checkpoint(checkpoint, halfway, state)
    resumed = run_dir.load_checkpoint()
    current, strategy = dict(resumed.model), make()
    for r in (3, 4):
        accumulator = strategy.begin(current, resumed.strategy if r == 3 else state)
        for update, n in updates_for(r, current):
            accumulator.add(update, n)
        current, state = accumulator.result(), accumulator.next_state

    for name in GLOBAL:
        assert current[name].tobytes() == uninterrupted[name].tobytes()
