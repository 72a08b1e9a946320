"""Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed learning"): each coordinate
of the new model is the median of the hospitals' values for it. One hospital of three cannot move it
past the other two, however far it sends its model; the price is a noisier model than the mean when
every hospital is honest and their data differ."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medfed.server.strategy.robust import StoredAccumulator


class MedianAccumulator(StoredAccumulator):
    def _combine(self, name: str) -> np.ndarray:
        return np.concatenate([np.median(stack, axis=0) for _, _, stack in self._store.slices(name)])


class Median:
    name = "median"

    def __init__(self, store_dir: Path) -> None:
        self._store_dir = store_dir

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def begin(self, global_state: Mapping[str, np.ndarray], state: object = None) -> MedianAccumulator:
        return MedianAccumulator(self._store_dir, global_state)
