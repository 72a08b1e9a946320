"""Exponential backoff with jitter, for hospitals reconnecting to a coordinator that went away.

Jitter spreads the reconnects of many hospitals after a coordinator restart instead of having them
all arrive in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 10.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._initial, self._maximum, self._factor, self._jitter = initial, maximum, factor, jitter
        self._rand = rand
        self._attempt = 0

    def next_delay(self) -> float:
        base = min(self._maximum, self._initial * self._factor**self._attempt)
        self._attempt += 1
        return base * (1.0 - self._jitter * self._rand())

    def reset(self) -> None:
        self._attempt = 0
