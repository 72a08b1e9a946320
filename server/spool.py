"""Uploads received into files instead of memory: what lets many hospitals upload at once, each at its
own link's pace, while the coordinator's memory stays bounded.

Holding a whole update in memory until it is checked and folded costs a model size per upload being
received; on slow hospital links uploads take seconds each, so admitting only a few at a time leaves the
other hospitals' links idle. So the coordinator holds the first few uploads in memory (the fastest path
on a fast link) and writes the others to a file in the run folder as their chunks arrive. Once one has
arrived whole it is checked and folded from the file, one tensor at a time: the tensors are read back
with ``preadv`` into fresh arrays, so the process holds one tensor of it at a time, and the bytes on
their way go through the page cache, which does not count as the coordinator's memory (mapped file pages
would). The file is deleted as soon as the update is folded or refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from medfed.common.tensors import Chunk, Layout, TensorSpec, in_order


class SpooledUpdate(Mapping[str, np.ndarray]):
    """An update in a file, laid out as its stream was: each tensor read back when it is asked for."""

    def __init__(self, layout: Layout, path: Path) -> None:
        self._specs: dict[str, TensorSpec] = {spec.name: spec for spec in layout.tensors}
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY)

    def __getitem__(self, name: str) -> np.ndarray:
        spec = self._specs[name]
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        value = np.empty(spec.nbytes, dtype=np.uint8)
        done = 0
        while done < spec.nbytes:  # preadv may return fewer bytes than asked
            read = os.preadv(self._fd, [value.data[done:]], spec.offset + done)
            if read == 0:
                raise ValueError(f"{self.path} ends inside tensor {name!r}")
            done += read
        return value.view(spec.dtype).reshape(spec.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def close(self) -> None:
        """Delete the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def spool(layout: Layout, chunks: Iterable[Chunk], folder: Path) -> SpooledUpdate:
    """Write a stream's chunks, checked in order (common/tensors.in_order), to a new file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".bin", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for _, data in in_order(layout, chunks):
                out.write(data)
        return SpooledUpdate(layout, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
