"""Who masks with whom: every pair of hospitals in a small federation, and above COMPLETE_UP_TO
hospitals SecAgg+'s sparse graph (Bell et al., CCS 2020): a Harary graph H(n, k) over the hospitals in
an order drawn from a public seed, each hospital joined to the k / 2 before and after it on the ring.

k grows as the logarithm of n (``degree``), so each hospital agrees, shares with and unmasks for k
peers instead of n - 1. The order is a keyed BLAKE2b hash of each name under the round's seed: any
hospital can recompute the graph the coordinator announces, and no one can pick a position.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from medfed.common.errors import SecureAggregationError

COMPLETE_UP_TO = 32
"""federations up to this size use the complete graph"""


def degree(n: int) -> int:
    """Neighbours each hospital has among ``n``: all the others up to COMPLETE_UP_TO, else an even
    number near 3 * log2(n), at least 2 * COMPLETE_UP_TO / 3 so that the graph never gets sparser than
    a complete one just below the cut-over would be."""
    if n <= COMPLETE_UP_TO:
        return n - 1
    k = max(3 * math.ceil(math.log2(n)), 2 * COMPLETE_UP_TO // 3)
    return min(n - 1, k + (k % 2))


def neighbours(names: Sequence[str], seed: bytes) -> dict[str, frozenset[str]]:
    """Each hospital's neighbours (a symmetric relation, no self loops)."""
    if len(set(names)) != len(names):
        raise SecureAggregationError("the hospitals of a round must have distinct names")
    n = len(names)
    k = degree(n)
    if k == n - 1:
        return {a: frozenset(b for b in names if b != a) for a in names}
    if len(seed) < 16:
        raise SecureAggregationError("the graph's seed needs at least 16 bytes")
    ring = sorted(names, key=lambda name: hashlib.blake2b(name.encode(), key=seed[:64], digest_size=32).digest())
    half = k // 2
    return {
        name: frozenset(ring[(i + step) % n] for step in range(-half, half + 1) if step != 0)
        for i, name in enumerate(ring)
    }
