"""Running fed-server and fed-client as child processes on one machine (fed-demo, fed-study, tests,
benchmarks), and a whole federation that way over mutual TLS (``run_locally``).

Each child writes its output to ``LOG_DIR/NAME.log``. ``stop_all`` ends every child that still runs
(SIGTERM, then SIGKILL), so callers put it in a ``finally`` and never leave processes behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from medfed.common.cli import CliError
from medfed.common.errors import MedfedError
from medfed.server.history import RoundRecord
from medfed.server.run_dir import HISTORY_FILE
from medfed.tools.certs import init_ca, issue_client, issue_server

POLL_INTERVAL_S = 0.05
STARTUP_TIMEOUT_S = 120.0
FOLLOW_INTERVAL_S = 0.2


class ProcessError(MedfedError, RuntimeError):
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


def _print_round(record: RoundRecord, rounds: int) -> None:
    if record.failed is not None:
        print(f"round {record.round:>3}/{rounds}  FAILED: {record.failed} (the previous model is kept)", flush=True)
        return
    accuracy, loss = (record.test.accuracy, record.test.loss) if record.test else (float("nan"), float("nan"))
    print(
        f"round {record.round:>3}/{rounds}  test accuracy {accuracy:.4f}  loss {loss:.4f}  "
        f"({record.num_clients} hospitals, {record.num_examples} images, {record.duration_s:.1f} s)",
        flush=True,
    )


def _follow(procs: ProcessGroup, history: Path, rounds: int) -> RoundRecord | None:
    """Print rounds as the coordinator records them, until it exits; stop early if anything fails."""
    seen = 0
    last: RoundRecord | None = None
    server = procs.procs["server"]
    while True:
        finished = server.poll() is not None
        lines = history.read_text().split("\n")[:-1] if history.exists() else []  # complete lines only
        for line in lines[seen:]:
            last = RoundRecord.from_json(json.loads(line))
            _print_round(last, rounds)
        seen = len(lines)
        failure = procs.failed()
        if failure is not None:
            name, code = failure
            raise CliError(f"{name} exited with status {code}; its log ends:\n{procs.tail(name)}")
        if finished:
            return last
        time.sleep(FOLLOW_INTERVAL_S)


def _make_pki(folder: Path, hospitals: list[str]) -> None:
    """A throwaway federation PKI, made exactly as fed-certs makes one: the demo runs with mutual TLS."""
    init_ca(folder, "medfed demo CA")
    issue_server(folder, ["127.0.0.1", "localhost"])
    for name in hospitals:
        issue_client(folder, name)


def run_locally(
    out: Path,
    hospitals: Mapping[str, Path],
    test_dir: Path,
    run_dir: Path,
    server_args: Sequence[str],
    client_args: Sequence[str] = (),
    hospital_args: Mapping[str, Sequence[str]] | None = None,
) -> RoundRecord | None:
    """One fed-server and one fed-client per hospital as processes over loopback with mutual TLS (a
    throwaway PKI in OUT/pki); prints each round as it is recorded and returns the last record (None
    when the coordinator recorded none). ``hospital_args``: more fed-client arguments for some."""
    logs, pki_dir, port_file = out / "logs", out / "pki", out / "server.port"
    port_file.unlink(missing_ok=True)  # a port file of an earlier run here would point at nothing
    threads = max(1, (os.cpu_count() or 1) // len(hospitals))
    _make_pki(pki_dir, list(hospitals))
    rounds = int(server_args[list(server_args).index("--rounds") + 1])
    tls_args = [
        "--tls-cert", str(pki_dir / "server.crt"), "--tls-key", str(pki_dir / "server.key"),
        "--tls-ca", str(pki_dir / "ca.crt"), "--tls-crl", str(pki_dir / "crl.pem"), "--allow", ",".join(hospitals),
        "--address", "127.0.0.1:0", "--port-file", str(port_file), "--min-clients", str(len(hospitals)),
        "--test-data", str(test_dir), "--out", str(run_dir), "--finish-grace", "30",
    ]  # fmt: skip
    procs = ProcessGroup(logs)
    codes: dict[str, int] = {}
    try:
        procs.start("server", "medfed.server", *tls_args, *server_args)
        port = procs.wait_for_port("server", port_file, STARTUP_TIMEOUT_S)
        print(
            f"coordinator listening on 127.0.0.1:{port} with mutual TLS (certificates in {pki_dir}); "
            f"starting {len(hospitals)} hospitals",
            flush=True,
        )
        for name, folder in hospitals.items():
            procs.start(
                name, "medfed.client", "--data", str(folder), "--server", f"127.0.0.1:{port}",
                "--tls-cert", str(pki_dir / f"{name}.crt"), "--tls-key", str(pki_dir / f"{name}.key"),
                "--tls-ca", str(pki_dir / "ca.crt"), "--no-progress", "--threads", str(threads), "--max-wait", "60",
                *client_args, *(hospital_args or {}).get(name, ()),
            )  # fmt: skip
        last = _follow(procs, run_dir / HISTORY_FILE, rounds)
        codes = procs.wait_all(timeout=60)
    except ProcessError as exc:
        raise CliError(str(exc)) from None
    finally:
        procs.stop_all()
    failed = next((name for name, code in codes.items() if code != 0), None)
    if failed is not None:
        raise CliError(f"{failed} exited with status {codes[failed]}; its log ends:\n{procs.tail(failed)}")
    return last


def exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the child processes
