"""Test-wide settings and fixtures."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from medfed.tools.local_run import ProcessGroup

# Tests provoke TLS handshake failures on purpose; gRPC's C core would log each one to stderr.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Child processes for one test, every one of them stopped when it ends (their logs in tmp/logs)."""
    group = ProcessGroup(tmp_path / "logs")
    yield group
    group.stop_all()
