"""The two digests the audit chain is made of.

An update's digest covers exactly what a hospital sent: the federation and round it was for, the
sample count it declared, whether it is weights or int8 differences, its tensor table and every byte of
its stream (padding included), so the hospital and the coordinator compute it from the same bytes, the
coordinator while they arrive. A model's digest covers its tensors by name (dtype, shape, values), not
how they were laid out, so the model the coordinator sent, its checkpoint and the final
``model.safetensors`` have the same digest whoever computes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from medfed.common.tensors import Layout

UPDATE_LABEL = b"medfed/update/v1"
MODEL_LABEL = b"medfed/model/v1"
DIGEST_BYTES = 32


def framed(*parts: bytes) -> bytes:
    """Length-prefixed fields: no two different lists of fields give the same bytes."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _table(layout: Layout) -> bytes:
    rows = [[t.name, t.dtype.name, list(t.shape), t.offset, t.nbytes, t.delta_scale] for t in layout.tensors]
    return json.dumps({"tensors": rows, "total_bytes": layout.total_bytes}, separators=(",", ":")).encode()


class UpdateDigest:
    """SHA-256 of one update, fed its stream's bytes in order (``update``) as they are sent or received."""

    def __init__(self, federation: str, round_number: int, num_examples: int, layout: Layout, *, delta: bool) -> None:
        head = framed(UPDATE_LABEL, federation.encode(), str(round_number).encode(), str(num_examples).encode(),
                      b"delta" if delta else b"weights", _table(layout))  # fmt: skip
        self._hash = hashlib.sha256(head)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def update_digest(
    federation: str, round_number: int, num_examples: int, layout: Layout, payload: bytes | bytearray, *, delta: bool
) -> bytes:
    """The digest of an update whose whole byte stream is at hand (the hospital's side)."""
    digest = UpdateDigest(federation, round_number, num_examples, layout, delta=delta)
    digest.update(memoryview(payload))
    return digest.digest()


def model_digest(state: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of a model's tensors in name order: name, dtype, shape, then the little-endian bytes."""
    h = hashlib.sha256(framed(MODEL_LABEL))
    for name in sorted(state):
        array = np.ascontiguousarray(state[name])
        h.update(framed(name.encode(), array.dtype.name.encode(), json.dumps(list(array.shape)).encode()))
        h.update(array.nbytes.to_bytes(8, "big"))
        h.update(array.reshape(-1).view(np.uint8).data)
    return h.hexdigest()
