"""Shamir t-of-n secret sharing over GF(p), p = 2^521 - 1 (a Mersenne prime): a 32-byte secret is one
field element, so a share is one element too, 66 bytes on the wire.

Any ``threshold`` shares rebuild the secret; fewer say nothing about it (every value is equally
likely). Coefficients come from ``secrets``, the operating system's generator. Holders are numbered
1..n (x = 0 is the secret itself).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from medfed.common.errors import SecureAggregationError

PRIME = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """Shares of a 32-byte ``secret`` for each holder (x = 1..); any ``threshold`` of them rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise SecureAggregationError(f"a shared secret has {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= len(holders):
        raise SecureAggregationError(f"threshold {threshold} needs 1..{len(holders)} holders")
    if len(set(holders)) != len(holders) or any(not 0 < x < PRIME for x in holders):
        raise SecureAggregationError("holders must be distinct, non-zero field elements")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in holders}


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (exactly ``threshold`` of them are used)."""
    if len(shares) < threshold:
        raise SecureAggregationError(f"{len(shares)} shares cannot rebuild a secret that needs {threshold}")
    points = sorted(shares.items())[:threshold]
    values = []
    for x, share in points:
        if len(share) != SHARE_BYTES or not 0 < x < PRIME:
            raise SecureAggregationError(f"share {x} is malformed")
        y = int.from_bytes(share, "big")
        if y >= PRIME:
            raise SecureAggregationError(f"share {x} is not a field element")
        values.append((x, y))
    secret = 0
    for i, (xi, yi) in enumerate(values):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(values):
            if i != j:
                numerator = numerator * (-xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise SecureAggregationError("the shares do not rebuild a secret of this size (wrong or forged shares)")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):  # Horner
        value = (value * x + c) % PRIME
    return value
