"""Running fed-server and fed-client as child processes on one machine (fed-demo, tests, benchmarks).

Each child writes its output to ``LOG_DIR/NAME.log``. ``stop_all`` ends every child that still runs
(SIGTERM, then SIGKILL), so callers put it in a ``finally`` and never leave processes behind.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

POLL_INTERVAL_S = 0.05


class ProcessError(RuntimeError):
    """A child process that failed or did not get where it should in time."""


class ProcessGroup:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        """Run ``python -m module args`` with this interpreter, so the child uses the same install."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 -- open as long as the process runs
        self._logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def tail(self, name: str, lines: int = 5) -> str:
        return "\n".join("    " + line for line in self.log(name).strip().splitlines()[-lines:])

    def failed(self) -> tuple[str, int] | None:
        """The first child that exited with a non-zero status, if any."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0):
                return name, code
        return None

    def wait_for_port(self, name: str, port_file: Path, timeout: float) -> int:
        """Poll until the server ``name`` has written the port it bound to ``port_file``."""
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.procs[name].poll() is not None:
                raise ProcessError(f"{name} exited at start-up; its log ends:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{name} did not start listening within {timeout:.0f} s")
            time.sleep(POLL_INTERVAL_S)
        return int(port_file.read_text())

    def wait_all(self, timeout: float) -> dict[str, int]:
        """Every child's exit status; ProcessError if any still runs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise ProcessError(
                    f"{name} still runs after {timeout:.0f} s; its log ends:\n{self.tail(name)}"
                ) from None
        return codes

    def stop_all(self, grace: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()


def share_one_malloc_arena() -> bool:
    """Make every thread of this process allocate from glibc's main arena; True if it took effect.

    glibc gives threads their own arenas and keeps freed memory in each; a coordinator whose gRPC
    threads stream 1 MiB chunks to ten hospitals at once kept about 270 MB more that way in a one-off
    comparison, and one arena cost no measurable round time. Call before starting threads."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return False
    m_arena_max = -8
    return bool(libc.mallopt(m_arena_max, 1))


def peak_rss_mb(pid: int | None = None) -> float | None:
    """A process's peak resident memory so far (this one's by default): VmHWM on Linux, and for this
    process ru_maxrss elsewhere; None when it cannot be read (another process that has exited, say).

    Not ru_maxrss on Linux: it carries the parent's resident size over fork and exec, so a coordinator
    started by a 680 MB benchmark process reported 680 MB before it had loaded anything."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # not Linux, or gone
        pass
    if pid is not None:
        return None
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)
