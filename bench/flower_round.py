"""Flower 1.39's round on bench/wan.py's workload and links, for a side-by-side comparison in one session.

The same model (ResNet-18's 62 tensors, 44.7 MB, as zeros of the same shapes and dtypes), no training
(each node returns what it received, bench/flower_app/), FedAvg, on Flower's Deployment Engine: one
`flower-superlink` and one `flower-supernode` process per hospital over gRPC (`--insecure`, as the medfed
runs), the app submitted with `flwr run`. With a link, every SuperNode reaches the SuperLink's Fleet API
through bench/link_proxy.py, as medfed's hospitals reach the coordinator. A round is timed from the
strategy configuring it to its aggregate (bench/flower_app/flowerbench/server_app.py), the span medfed's
history records; round 1 is a warm-up and is left out of the median.

Flower needs its own virtual environment (its dependencies pin other versions than medfed's):

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr==1.39.0
    python bench/flower_round.py --flower-venv /tmp/flwr-venv --hospitals 3 10 --links loopback 50 50:100

Writes OUT/flower.json (default bench/wan/) and prints each figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from link_proxy import start_link, stop_link  # bench/ is on sys.path when run as a script
from wan import parse_link

from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import to_numpy
from medfed.server.memory import peak_rss_mb

APP = Path(__file__).with_name("flower_app")
POLL_S = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"Flower did not start listening on {port}; see {log}") from None
            time.sleep(POLL_S)


def flower_pids() -> list[int]:
    """The SuperLink and ServerApp processes (where Flower's server side lives)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"flower-superlink" in cmdline or b"flwr-serverapp" in cmdline:
                found.append(int(entry.name))
    return found


def measure(venv: Path, hospitals: int, rounds: int, rtt: float | None, rate: float | None,
            work: Path) -> dict[str, object]:  # fmt: skip
    home, logs = work / "flwr-home", work / "logs"
    home.mkdir()
    logs.mkdir()
    fleet, control = free_port(), free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{control}"\ninsecure = true\n'
    )
    shapes, timings = work / "shapes.json", work / "timings.jsonl"
    state = to_numpy(build_model("resnet18", 1, 2).state_dict())
    shapes.write_text(json.dumps([[list(v.shape), v.dtype.name] for v in state.values()]))
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    procs: list[subprocess.Popen[bytes]] = []
    link = None
    peak = 0.0

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        superlink = start("superlink", str(venv / "bin" / "flower-superlink"), "--insecure",
                          "--disable-runtime-dependency-installation", "--fleet-api-address", f"127.0.0.1:{fleet}",
                          "--host", "127.0.0.1", "--port", str(control))  # fmt: skip
        wait_for_port(fleet, superlink, logs / "superlink.log")
        wait_for_port(control, superlink, logs / "superlink.log")
        target = fleet
        if rtt is not None:
            link, target = start_link(fleet, rtt, rate, work / "link.port")
        for i in range(hospitals):
            start(f"supernode{i}", str(venv / "bin" / "flower-supernode"), "--insecure", "--superlink",
                  f"127.0.0.1:{target}", "--port", str(free_port()), "--node-config", f"partition-id={i}")  # fmt: skip
        run_config = (f'num-server-rounds={rounds} num-nodes={hospitals} shapes-path="{shapes}" '
                      f'timings-path="{timings}"')  # fmt: skip
        submitted = subprocess.run([str(venv / "bin" / "flwr"), "run", str(APP), "bench", "--run-config", run_config],
                                   env=env, cwd=APP, capture_output=True, text=True, timeout=300)  # fmt: skip
        if submitted.returncode != 0:
            raise SystemExit(f"flwr run failed: {submitted.stdout}{submitted.stderr}")
        deadline = time.monotonic() + 60 * rounds + 600
        while not timings.exists() or len(timings.read_text().splitlines()) < rounds:
            if time.monotonic() > deadline or superlink.poll() is not None:
                raise SystemExit(f"Flower did not finish {rounds} rounds; logs in {logs}")
            peak = max([peak, *(peak_rss_mb(pid) or 0.0 for pid in flower_pids())])
            time.sleep(POLL_S)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if link is not None:
            stop_link(link)
    records = [json.loads(line) for line in timings.read_text().splitlines()]
    if any(r["replies"] != hospitals for r in records):
        raise SystemExit(f"a Flower round went without some of its {hospitals} nodes: {records}")
    measured = [r["duration_s"] for r in records[1:]]
    return {"hospitals": hospitals, "median_s": statistics.median(measured), "min_s": min(measured),
            "max_s": max(measured), "rounds_measured": len(measured), "server_peak_rss_mb": round(peak, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flower-venv", type=Path, required=True, help="a virtual environment with flwr 1.39")
    parser.add_argument("--hospitals", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--links", nargs="+", default=["loopback", "50", "50:100", "200"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("wan"))
    args = parser.parse_args()
    version = subprocess.run([str(args.flower_venv / "bin" / "python"), "-c", "import flwr; print(flwr.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for link in args.links:
        rtt, rate = parse_link(link)
        for hospitals in args.hospitals:
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="flower-bench-") as tmp:
                result = measure(args.flower_venv, hospitals, args.rounds, rtt, rate, Path(tmp))
            rows.append({"link": link, "rtt_ms": rtt, "rate_mbit": rate, "encoding": "lossless", **result})
            print(f"{link:>9} {hospitals:3d} hospitals: Flower {version} median round {result['median_s']:.3f} s, "
                  f"server side {result['server_peak_rss_mb']:.0f} MB ({time.monotonic() - started:.0f} s)",
                  flush=True)  # fmt: skip
            summary = {"flower": version, "machine": f"Python {platform.python_version()}, {platform.machine()}",
                       "rounds": args.rounds, "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
                       "rows": rows}  # fmt: skip
            (args.out / "flower.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
