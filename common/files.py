"""Files written so that a reader (or a crash) never sees half of one: each is written under a temporary
name beside its destination and renamed over it, which replaces it in one step on POSIX file systems.

``durable`` also fsyncs the file before the rename (and the folder after it), for what a restart must
find complete: checkpoints, the history, a privacy ledger. Reports and plots do without.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def replacing(path: Path, *, durable: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yields the temporary path to write; when the block ends without an error it replaces ``path``.
    ``mode``: the file's permissions from its creation on (a private key is never readable by others)."""
    tmp = temporary_name(path)
    if mode is not None:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        os.chmod(tmp, mode)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def write_bytes(path: Path, data: bytes, *, durable: bool = False, mode: int | None = None) -> None:
    with replacing(path, durable=durable, mode=mode) as tmp, open(tmp, "r+b" if mode is not None else "wb") as f:
        f.write(data)
        f.truncate()


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    write_bytes(path, text.encode(), durable=durable)


def write_json(path: Path, data: Mapping[str, Any] | list[Any], *, durable: bool = False, indent: int = 2) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n", durable=durable)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(f: IO[Any]) -> None:
    """Make what was written to the open file ``f`` survive a power cut (an appended history line)."""
    f.flush()
    os.fsync(f.fileno())
