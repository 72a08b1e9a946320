"""The robust rules (median, trimmed mean, Krum, Multi-Krum, norm bound) against oracles written from
their papers' definitions over all updates held at once, in shuffled arrival order and with the
disk-backed store cut into many slices."""

from pathlib import Path

import numpy as np
import pytest

from medfed.common.dp.mechanisms import l2_norm
from medfed.server.strategy import AggregationError, Strategy
from medfed.server.strategy import update_store as store_module
from medfed.server.strategy.fedavg import FedAvg
from medfed.server.strategy.krum import Krum
from medfed.server.strategy.median import Median
from medfed.server.strategy.norm_bound import NormBound
from medfed.server.strategy.trimmed_mean import TrimmedMean

State = dict[str, np.ndarray]
RNG = np.random.default_rng(3)
GLOBAL: State = {
    "w": RNG.standard_normal((7, 5)).astype(np.float32),
    "b": RNG.standard_normal(3).astype(np.float32),
    "count": np.array(4),
}


def hospitals(n: int, *, outlier: float | None = None) -> list[tuple[State, int]]:
    """n honest updates near the global model; with ``outlier``, the last one scaled by it."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        update = {
            k: (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in GLOBAL.items() if k != "count"
        }
        update["count"] = np.array(4 + i)
        out.append((update, 10 * (i + 1)))
    if outlier is not None:
        last = out[-1][0]
        out[-1] = ({**last, "w": (last["w"] * outlier).astype(np.float32)}, out[-1][1])
    return out


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice of a few coordinates, so every rule works across many of them."""
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 64)


def aggregate(strategy: Strategy, updates: list[tuple[State, int]], order_seed: int) -> State:
    order = np.random.default_rng(order_seed).permutation(len(updates))
    accumulator = strategy.begin(GLOBAL)
    try:
        for i in order:
            accumulator.add(*updates[i])
        return accumulator.result()
    finally:
        accumulator.close()


def stacked(updates: list[tuple[State, int]], name: str) -> np.ndarray:
    return np.stack([u[name].astype(np.float64) for u, _ in updates])


@pytest.mark.parametrize("n", [3, 4, 7])
def test_median_is_numpys_median_over_the_stacked_updates(tmp_path: Path, n: int) -> None:
    updates = hospitals(n, outlier=100.0)
    for seed in range(3):
        got = aggregate(Median(tmp_path), updates, seed)

        for name in ("w", "b"):
            np.testing.assert_array_equal(got[name], np.median(stacked(updates, name), axis=0).astype(np.float32))
        assert got["count"] == np.rint(np.median(stacked(updates, "count")))


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (7, 0.3), (3, 0.2)])
def test_trimmed_mean_drops_the_extremes_of_each_coordinate(tmp_path: Path, n: int, beta: float) -> None:
    updates = hospitals(n, outlier=50.0)
    k = int(beta * n)
    got = aggregate(TrimmedMean(tmp_path, beta), updates, 1)

    for name in ("w", "b"):
        values = np.sort(stacked(updates, name), axis=0)
        np.testing.assert_allclose(got[name], values[k : n - k].mean(axis=0).astype(np.float32), rtol=1e-6)


def brute_force_krum(updates: list[tuple[State, int]], f: int, m: int) -> State:
    vectors = [np.concatenate([u["w"].ravel(), u["b"].ravel()]).astype(np.float64) for u, _ in updates]
    n = len(vectors)
    closest = max(1, n - f - 2)
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[:closest]))
    chosen = sorted(np.argsort(scores, kind="stable")[:m])
    return {name: np.mean([updates[i][0][name].astype(np.float64) for i in chosen], axis=0) for name in GLOBAL}


@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (7, 2, 1), (7, 2, 3), (3, 1, 1)])
def test_krum_and_multi_krum_choose_what_brute_force_scoring_chooses(tmp_path: Path, n: int, f: int, m: int) -> None:
    updates = hospitals(n, outlier=30.0)
    expected = brute_force_krum(updates, f, m)
    for seed in range(3):
        got = aggregate(Krum(tmp_path, f, m), updates, seed)

        np.testing.assert_allclose(got["w"], expected["w"].astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(got["b"], expected["b"].astype(np.float32), rtol=1e-6)
    assert not np.allclose(got["w"], updates[-1][0]["w"])  # the outlier is never the one chosen


def test_multi_krum_averages_n_minus_f_by_default(tmp_path: Path) -> None:
    updates = hospitals(6, outlier=30.0)

    got = aggregate(Krum(tmp_path, 1, None), updates, 0)

    np.testing.assert_allclose(got["w"], brute_force_krum(updates, 1, 5)["w"].astype(np.float32), rtol=1e-6)


def test_norm_bound_scales_each_difference_to_the_bound_in_front_of_any_rule(tmp_path: Path) -> None:
    updates = hospitals(3, outlier=100.0)
    bound = 0.5

    alone = aggregate(NormBound(FedAvg(), bound, alone=True), updates, 0)
    before_median = aggregate(NormBound(Median(tmp_path), bound), updates, 0)

    def clipped(u: State) -> State:
        delta = {k: u[k].astype(np.float64) - GLOBAL[k] for k in ("w", "b")}
        factor = min(1.0, bound / l2_norm(delta))
        return {**u, **{k: (GLOBAL[k] + factor * d).astype(np.float32) for k, d in delta.items()}}

    bounded = [(clipped(u), n) for u, n in updates]
    weights = np.array([n for _, n in updates], dtype=np.float64)
    expected_mean = np.tensordot(weights / weights.sum(), stacked(bounded, "w"), axes=1)
    np.testing.assert_allclose(alone["w"], expected_mean.astype(np.float32), rtol=1e-5)
    np.testing.assert_array_equal(before_median["w"], np.median(stacked(bounded, "w"), axis=0).astype(np.float32))
    assert l2_norm({k: alone[k].astype(np.float64) - GLOBAL[k] for k in ("w", "b")}) <= bound * (1 + 1e-6)


def test_the_store_is_removed_when_the_round_closes_and_bad_updates_change_nothing(tmp_path: Path) -> None:
    accumulator = Median(tmp_path).begin(GLOBAL)
    accumulator.add(*hospitals(1)[0])
    with pytest.raises(AggregationError, match="shape"):
        accumulator.add({**GLOBAL, "w": np.zeros((2, 2), dtype=np.float32)}, 5)
    assert accumulator.num_updates == 1 and any(tmp_path.rglob("update-*.bin"))

    accumulator.close()

    assert not any(tmp_path.rglob("*.bin")) and not any(p.is_dir() for p in tmp_path.iterdir())


def test_krum_needs_two_updates_to_compare(tmp_path: Path) -> None:
    accumulator = Krum(tmp_path).begin(GLOBAL)
    accumulator.add(*hospitals(1)[0])

    with pytest.raises(AggregationError, match="at least 2 updates"):
        accumulator.result()
    accumulator.close()
