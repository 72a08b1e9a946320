"""Coordinate-wise trimmed mean (Yin et al. 2018): for each coordinate, the ⌊βn⌋ largest and the ⌊βn⌋
smallest of the n hospitals' values are dropped and the rest averaged. Robust to up to ⌊βn⌋ poisoned
hospitals, closer to the mean than the median when all are honest. With fewer than 1/β hospitals
nothing is trimmed: it is then the plain (unweighted) mean, which the log says at start-up."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medfed.server.strategy.robust import StoredAccumulator


class TrimmedMeanAccumulator(StoredAccumulator):
    def __init__(self, store_dir: Path, global_state: Mapping[str, np.ndarray], beta: float) -> None:
        super().__init__(store_dir, global_state)
        self._beta = beta

    def _combine(self, name: str) -> np.ndarray:
        n = self._store.count
        k = math.floor(self._beta * n)
        parts = []
        for _, _, stack in self._store.slices(name):
            ordered = np.sort(stack.astype(np.float64), axis=0)
            parts.append(ordered[k : n - k].mean(axis=0))
        return np.concatenate(parts)


class TrimmedMean:
    name = "trimmed-mean"

    def __init__(self, store_dir: Path, beta: float = 0.2) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"the trimmed fraction β must be in [0, 0.5), got {beta}")
        self._store_dir = store_dir
        self.beta = beta

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "trim_fraction": self.beta}

    def begin(self, global_state: Mapping[str, np.ndarray], state: object = None) -> TrimmedMeanAccumulator:
        return TrimmedMeanAccumulator(self._store_dir, global_state, self.beta)
