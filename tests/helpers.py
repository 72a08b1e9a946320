"""Shared test helpers: generated data, and real processes that are always cleaned up."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from medfed.common.data import DatasetInfo
from medfed.common.sources import SourceDataset

POLL_INTERVAL_S = 0.05


def synthetic_dataset(
    num_classes: int = 4, size: int = 12, per_class: tuple[int, int, int] = (60, 10, 40), seed: int = 0
) -> SourceDataset:
    """Noisy images whose class decides where a bright square sits: learnable in a round or two."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), per_class, strict=True):
        labels = np.repeat(np.arange(num_classes), count)
        images = rng.integers(0, 70, size=(len(labels), size, size), dtype=np.uint8)
        half = size // 2
        for i, c in enumerate(labels):
            r, col = divmod(int(c) % 4, 2)
            images[i, r * half : (r + 1) * half, col * half : (col + 1) * half] += np.uint8(150 + 20 * (int(c) // 4))
        order = rng.permutation(len(labels))
        splits[split] = (images[order], labels[order].astype(np.int64))
    info = DatasetInfo(
        dataset="synthetic",
        task="multi-class",
        channels=1,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        image_size=(size, size),
    )
    return SourceDataset(info, splits)


def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


class Processes:
    """Real fed-* processes with their output in log files; ``close`` stops whatever still runs."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 -- open as long as the process runs
        self._logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_all(self, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{name} still running after {timeout:.0f} s; log:\n{self.log(name)[-3000:]}"
                ) from None
        return codes

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for log in self._logs:
            log.close()


def start_server(procs: Processes, tmp: Path, *args: str, timeout: float = 60.0) -> int:
    """Start fed-server on a free port (port 0) and return the port it bound."""
    port_file = tmp / "server.port"
    server = procs.start(
        "server",
        "medfed.server",
        "--insecure",
        "--address",
        "127.0.0.1:0",
        "--port-file",
        str(port_file),
        *args,
    )
    poll_until(lambda: port_file.exists() or server.poll() is not None, timeout, "the server to listen")
    assert server.poll() is None, f"server exited early:\n{procs.log('server')}"
    return int(port_file.read_text())


def run_cli(module: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
