"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant
gradient descent").

Each update gets a score: the sum of its squared distances to its n − f − 2 nearest other updates
(f: the number of poisoned hospitals to tolerate). Krum takes the update with the lowest score;
Multi-Krum the m lowest and averages them (unweighted, as in the paper). An update far from the
others scores high and is left out. The guarantee needs n ≥ 2f + 3; with fewer updates the score
uses at least the single nearest neighbour (Flower does the same), which still drops one outlier
among three hospitals but promises nothing more.

Distances are computed over the float tensors (BatchNorm's counters would dominate them otherwise),
as each update arrives: update j is compared with the j − 1 stored before it, a tensor at a time, in
the precision the store keeps (float32 for a float32 model), so the round's end only sorts an n x n
table. The work is n²/2 model-sized differences a round: inherent to Krum.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medfed.server.strategy import AggregationError
from medfed.server.strategy.robust import StoredAccumulator


def scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Krum's score of each update from the table of squared distances."""
    n = len(distances)
    closest = max(1, n - f - 2)
    out = np.empty(n)
    for i in range(n):
        others = np.delete(distances[i], i)
        out[i] = np.sort(others)[: min(closest, len(others))].sum()
    return out


class KrumAccumulator(StoredAccumulator):
    def __init__(self, store_dir: Path, global_state: Mapping[str, np.ndarray], f: int, m: int | None) -> None:
        super().__init__(store_dir, global_state)
        self._f, self._m = f, m
        self._floats = self._store.float_names(self._template)
        self._distances: list[list[float]] = []
        self.selected: list[int] | None = None
        """the indices (arrival order) of the updates the round's model is made of"""

    def _arrived(self, index: int, update: Mapping[str, np.ndarray]) -> None:
        row = [0.0] * index
        for name in self._floats:
            # as the store keeps it (float32 for a float32 model), converted once for all earlier updates;
            # each tensor's sum of squares comes from BLAS, the tensors' sums add up in float64
            current = np.asarray(update[name]).reshape(-1).astype(self._store.dtype(name), copy=False)
            for earlier in range(index):
                diff = current - self._store.read(earlier, name)
                row[earlier] += float(np.dot(diff, diff))
        for earlier, distance in enumerate(row):
            self._distances[earlier].append(distance)
        self._distances.append([*row, 0.0])

    def _check(self) -> None:
        n = self._store.count
        if n < 2:
            raise AggregationError(f"krum needs at least 2 updates to compare, got {n}")
        chosen = n - self._f if self._m is None else min(self._m, n)
        order = np.argsort(scores(np.array(self._distances), self._f), kind="stable")
        self.selected = sorted(int(i) for i in order[: max(1, chosen)])

    def _combine(self, name: str) -> np.ndarray:
        assert self.selected is not None
        total = np.zeros(int(np.prod(self._store.shape(name), dtype=np.int64)), dtype=np.float64)
        for index in self.selected:
            total += self._store.read(index, name)
        return total / len(self.selected)


class Krum:
    def __init__(self, store_dir: Path, f: int = 1, m: int | None = 1) -> None:
        """``m``: how many updates Multi-Krum averages (None: n − f); 1 is Krum."""
        if f < 0 or (m is not None and m < 1):
            raise ValueError("krum needs f ≥ 0 and m ≥ 1")
        self._store_dir = store_dir
        self.f, self.m = f, m
        self.name = "krum" if m == 1 else "multi-krum"

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "krum_f": self.f, "krum_m": self.m}

    def begin(self, global_state: Mapping[str, np.ndarray], state: object = None) -> KrumAccumulator:
        return KrumAccumulator(self._store_dir, global_state, self.f, self.m)
