"""A round's updates on disk, for the rules that need all of them at once (median, trimmed mean, Krum).

Holding every update in memory would make the coordinator's memory grow with the number of hospitals;
here each update goes to its own file in the run folder as it arrives (one per hospital, float tensors
as float32 or float64, counters as float64) and the rules read them back a slice of coordinates at a
time, for all hospitals at once: memory stays a few model sizes plus ``CHUNK_BYTES``, whatever the
number of hospitals, and the disk holds hospitals x model. Files are read and written with plain
reads and writes, not memory maps: mapped file pages count as the process's resident memory, while
the page cache behind a read does not.

The folder is removed when the round closes (``close``), and by the run folder's ``prepare``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from medfed.common.tensors import is_float

CHUNK_BYTES = 32 << 20
"""how much of all hospitals' updates one slice holds (at most; at least one coordinate each)"""


@dataclass(frozen=True)
class _Slot:
    offset: int
    """in bytes, within each update's file"""
    size: int
    """elements"""
    dtype: np.dtype
    shape: tuple[int, ...]


def _store_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64, other floats are kept as float32 (bfloat16 included), counters as float64."""
    if dtype == np.float64 or not is_float(dtype):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


class UpdateStore:
    def __init__(self, folder: Path, template: Mapping[str, np.ndarray]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = Path(tempfile.mkdtemp(prefix="round-", dir=folder))
        self._slots: dict[str, _Slot] = {}
        offset = 0
        for name, tensor in template.items():
            dtype = _store_dtype(tensor.dtype)
            self._slots[name] = _Slot(offset, int(tensor.size), dtype, tuple(tensor.shape))
            offset += int(tensor.size) * dtype.itemsize
        self._files: list[IO[bytes]] = []

    @property
    def count(self) -> int:
        return len(self._files)

    def add(self, update: Mapping[str, np.ndarray]) -> int:
        """Write ``update`` (checked already: the template's tensors and shapes); returns its index."""
        path = self._folder / f"update-{len(self._files):06d}.bin"
        with open(path, "wb") as out:
            for name, slot in self._slots.items():
                np.ascontiguousarray(update[name], dtype=slot.dtype).tofile(out)
        self._files.append(open(path, "rb"))  # noqa: SIM115 (kept open until close)
        return len(self._files) - 1

    def read(self, index: int, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Elements ``start:stop`` of one update's tensor ``name``, flattened."""
        slot = self._slots[name]
        stop = slot.size if stop is None else stop
        handle = self._files[index]
        handle.seek(slot.offset + start * slot.dtype.itemsize)
        return np.fromfile(handle, dtype=slot.dtype, count=stop - start)

    def slices(self, name: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, stacked) over tensor ``name``: ``stacked`` is (updates, stop - start), so a rule
        can work coordinate-wise on every hospital's values at once."""
        slot = self._slots[name]
        step = max(1, CHUNK_BYTES // max(1, self.count * slot.dtype.itemsize))
        for start in range(0, slot.size, step):
            stop = min(slot.size, start + step)
            yield start, stop, np.stack([self.read(i, name, start, stop) for i in range(self.count)])

    def shape(self, name: str) -> tuple[int, ...]:
        return self._slots[name].shape

    def dtype(self, name: str) -> np.dtype:
        """How tensor ``name`` is kept (float32, or float64 for float64 tensors and counters)."""
        return self._slots[name].dtype

    def float_names(self, template: Mapping[str, np.ndarray]) -> list[str]:
        return [name for name in self._slots if is_float(template[name].dtype)]

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        self._files = []
        shutil.rmtree(self._folder, ignore_errors=True)
