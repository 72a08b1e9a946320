"""A hospital's masked vector, and the unmasking of their sum.

Hospital i sends y_i = x_i + PRG(b_i) + sum over its neighbours j of sign(i, j) * PRG(s_ij), modulo 2^32,
where b_i is its own self-mask seed, s_ij the seed it agreed with j, and sign(i, j) is +1 when i's name
sorts before j's, -1 otherwise. Between two hospitals whose vectors are both in the sum the pair masks
cancel; what is left is each included hospital's self mask (removed with b_i, rebuilt from shares) and
the pair masks towards neighbours whose vector never arrived (removed with s_ij, rebuilt from the
dropped hospital's mask key). Addition modulo 2^32 is uint32 arithmetic that wraps, in any order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from medfed.common.secagg.prg import mask_chunks

CACHE_CHUNK = 1 << 16
"""values per step (256 KB of uint32): small enough that the vector's chunk stays in cache across masks"""
SELF = b"self/"
PAIR = b"pair/"


def sign(me: str, other: str) -> int:
    return 1 if me < other else -1


def _add_all(vector: np.ndarray, masks: list[tuple[bytes, bytes, int]]) -> None:
    """vector += sum of factor * PRG(seed, label) over ``masks``, chunk by chunk: each chunk of the vector
    stays in cache while every mask's keystream for it is added."""
    streams = [(mask_chunks(seed, label, len(vector), CACHE_CHUNK), factor) for seed, label, factor in masks]
    start = 0
    while start < len(vector):
        view = None
        for stream, factor in streams:
            chunk = next(stream)
            view = vector[start : start + len(chunk)] if view is None else view
            (np.add if factor > 0 else np.subtract)(view, chunk, out=view)
        if view is None:
            return
        start += len(view)


def masked(term: np.ndarray, me: str, self_seed: bytes, pairs: Mapping[str, bytes], label: bytes) -> np.ndarray:
    """``term`` (uint32, from fixed_point) masked with this hospital's self mask and pair masks."""
    vector = np.array(term, dtype=np.uint32, copy=True)
    masks = [(self_seed, SELF + label, 1)] + [
        (seed, PAIR + label, sign(me, other)) for other, seed in sorted(pairs.items())
    ]
    _add_all(vector, masks)
    return vector


def unmask(
    total: np.ndarray, self_seeds: Iterable[bytes], stray_pairs: Iterable[tuple[str, str, bytes]], label: bytes
) -> np.ndarray:
    """The sum of the included hospitals' terms: ``total`` less their self masks (``self_seeds``) and less
    the pair masks ``(included, dropped, seed)`` an included hospital added towards a dropped one."""
    vector = np.array(total, dtype=np.uint32, copy=True)
    masks = [(seed, SELF + label, -1) for seed in self_seeds]
    masks += [(seed, PAIR + label, -sign(included, dropped)) for included, dropped, seed in stray_pairs]
    _add_all(vector, masks)
    return vector
