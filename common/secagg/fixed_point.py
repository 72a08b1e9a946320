"""Updates as integers modulo 2^32, so that masked vectors add up to the weighted average.

Each hospital sends its difference from the round's global model, every coordinate clipped to
[-clip, clip], multiplied by its FedAvg weight n_i / sum(n) and rounded to a multiple of 1 / scale.
The weights sum to at most 1, so the sum of N such terms stays within clip * scale + N / 2 in absolute
value; ``scale`` is chosen so that this is below 2^31, and the sum read as a signed 32-bit integer is
exact. Rounding each term to the nearest integer puts the unmasked average within N / (2 * scale) of
the plain weighted average of the clipped differences, coordinate by coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfed.common.errors import SecureAggregationError

LIMIT = 2**31 - 1


@dataclass(frozen=True)
class FixedPoint:
    clip: float
    """the largest absolute value a coordinate of a difference keeps"""
    hospitals: int
    """the most terms summed (the hospitals chosen for the round), for the rounding's headroom"""

    def __post_init__(self) -> None:
        if not (self.clip > 0 and np.isfinite(self.clip)):
            raise SecureAggregationError(f"the fixed-point range needs a positive clip, not {self.clip}")
        if not 1 <= self.hospitals < LIMIT // 4:
            raise SecureAggregationError(f"{self.hospitals} hospitals do not fit a 32-bit sum")

    @property
    def scale(self) -> float:
        return (LIMIT - self.hospitals) / self.clip

    @property
    def error_bound(self) -> float:
        """How far an unmasked coordinate may be from the plain weighted average of the clipped values."""
        return self.hospitals / (2 * self.scale)

    def encode(self, difference: np.ndarray, weight: float) -> np.ndarray:
        """A hospital's term: ``difference`` (flat floats) clipped, times ``weight``, as uint32."""
        if not 0 < weight <= 1:
            raise SecureAggregationError(f"a FedAvg weight lies in (0, 1], not {weight}")
        # In place, one array: a ResNet-18 difference is 11 million values.
        term = np.clip(np.asarray(difference, dtype=np.float64), -self.clip, self.clip)
        np.nan_to_num(term, copy=False, nan=0.0)
        term *= weight * self.scale
        np.rint(term, out=term)
        return term.astype(np.int32).view(np.uint32)  # |term| <= clip * scale < 2^31: int32 holds it

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The sum of the terms (uint32, modulo 2^32) as floats: the weighted average of the differences
        (divide by the sum of the weights present when some hospitals' terms are missing)."""
        return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / self.scale
