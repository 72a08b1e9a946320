"""Round time of pure communication rounds: a real fed-server and N real fed-client processes on loopback.

The hospitals do no training (--local-epochs 0): each round streams the global model to every hospital
and back and aggregates, so the round time is the system's overhead. Data is generated (a few random
28x28 images per hospital); the model is ResNet-18 (11.2M parameters, 44.7 MB).

    python bench/round_overhead.py --hospitals 3 10 --rounds 6
    python bench/round_overhead.py --hospitals 3 10 --rtt-ms 50 --rate-mbit 100   (an emulated hospital link)

Round 1 is a warm-up and is left out of the median. Reported per N: median round time, bytes moved
per round (model bytes handed to hospitals plus update bytes received, from history.jsonl), the
coordinator's peak RSS (its own VmHWM, recorded in history.jsonl) and the largest hospital peak
RSS (VmHWM from /proc, polled); also the peak RSS of the coordinator's PyTorch helper process, which
builds the first model and, with no test set, is gone before round 1. The floors, measured in the same
run: the time plain loopback TCP takes to carry one round's bytes from one process to another, and
the time to serialise the state_dict once and to deserialise it once. Results go to stdout and to
bench/round_overhead.json.

With ``--rtt-ms`` (and ``--rate-mbit``) every hospital reaches the coordinator through bench/link_proxy.py,
an emulated link that delays every byte by half the round trip in each direction and caps each
hospital's connection at the rate in each direction; the link floor is then the time each hospital's
own bytes (the model down, its update up) take at that rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from link_proxy import start_link, stop_link  # bench/ is on sys.path when run as a script
from many_hospitals import import_floor_mb

from medfed.common import __version__
from medfed.common.data.folders import DatasetInfo
from medfed.common.data.partition import partition_to_folders
from medfed.common.data.sources import SourceDataset
from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import to_numpy
from medfed.common.tensors import encode, from_chunks
from medfed.server.memory import peak_rss_mb
from medfed.server.run_dir import RunDir
from medfed.tools.local_run import ProcessGroup

MIB = 1 << 20


def tiny_dataset(hospitals: int, seed: int = 0) -> SourceDataset:
    rng = np.random.default_rng(seed)
    n = 8 * hospitals
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 2
    info = DatasetInfo(dataset="random", channels=1, class_names=("a", "b"), image_size=(28, 28))
    return SourceDataset(info, {"train": (images, labels)})


def measure(hospitals: int, rounds: int, model: str, work: Path, extra: list[str], rtt_ms: float | None = None,
            rate_mbit: float | None = None) -> dict[str, float]:  # fmt: skip
    data = work / f"data{hospitals}"
    partition_to_folders(tiny_dataset(hospitals), data, clients=hospitals, scheme="iid")
    names = sorted(p.name for p in data.iterdir())
    out, port_file = work / f"run{hospitals}", work / f"port{hospitals}"
    procs = ProcessGroup(work / f"logs{hospitals}")
    hospital_peak = 0.0
    link = None
    try:
        server = procs.start(
            "server", "medfed.server", "--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file),
            "--rounds", str(rounds), "--min-clients", str(hospitals), "--model", model, "--local-epochs", "0",
            "--out", str(out), *extra,
        )  # fmt: skip
        port = procs.wait_for_port("server", port_file, 120)
        if rtt_ms is not None:
            link, port = start_link(port, rtt_ms, rate_mbit, work / f"link{hospitals}.port")
        client_args = ["--server", f"127.0.0.1:{port}", "--insecure", "--threads", "1", "--no-progress"]
        clients = [procs.start(name, "medfed.client", "--data", str(data / name), *client_args) for name in names]
        while server.poll() is None and not procs.failed():
            hospital_peak = max([hospital_peak, *(peak_rss_mb(c.pid) or 0.0 for c in clients)])
            time.sleep(0.2)
        codes = procs.wait_all(timeout=1800)
    finally:
        procs.stop_all()
        if link is not None:
            stop_link(link)
    if any(codes.values()):
        raise SystemExit(f"a process failed: {codes}; logs in {procs.log_dir}")
    history = RunDir(out).history()
    if any(r.num_clients != hospitals for r in history):
        raise SystemExit(f"{hospitals} hospitals: a round went without some of them; see {out}")
    measured = history[1:]
    return {
        "hospitals": hospitals,
        "median_s": statistics.median(r.duration_s for r in measured),
        "min_s": min(r.duration_s for r in measured),
        "max_s": max(r.duration_s for r in measured),
        "rounds_measured": len(measured),
        "bytes_per_round": statistics.median(r.bytes_down + r.bytes_up for r in measured),
        "bytes_up_per_round": statistics.median(r.bytes_up for r in measured),
        "link_floor_s": (
            statistics.median(r.bytes_down + r.bytes_up for r in measured) / hospitals * 8 / (rate_mbit * 1e6)
        )
        if rate_mbit
        else None,
        "coordinator_peak_rss_mb": history[-1].server_peak_rss_mb,
        "model_helper_peak_rss_mb": history[-1].model_helper_peak_rss_mb,
        "hospital_peak_rss_mb": round(hospital_peak, 1),
    }


def _sink() -> None:
    """Child process: accept one connection, read until it closes, reply with the byte count."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    buffer, total = bytearray(MIB), 0
    while n := conn.recv_into(buffer):
        total += n
    sys.stdout.write(f"{total}\n")
    sys.stdout.flush()


def loopback_seconds(nbytes: int) -> float:
    """Time to push ``nbytes`` through a loopback TCP connection into another process."""
    sink = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        block = memoryview(bytearray(MIB))
        with socket.create_connection(("127.0.0.1", port)) as conn:
            started = time.perf_counter()
            sent = 0
            while sent < nbytes:
                sent += conn.send(block[: min(MIB, nbytes - sent)])
            conn.shutdown(socket.SHUT_WR)
            received = int(sink.stdout.readline())
            elapsed = time.perf_counter() - started
    finally:
        sink.wait(timeout=60)
    if received != nbytes:
        raise SystemExit(f"loopback floor: sent {nbytes} bytes, the sink got {received}")
    return elapsed


def serde_seconds(model: str, repeats: int = 5) -> tuple[float, float, int]:
    """Median time to serialise the state_dict once and to deserialise it once, and its size."""
    state = to_numpy(build_model(model, 1, 2).state_dict())
    encode_times, decode_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        encoded = encode(state)
        encode_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        from_chunks(encoded.layout, encoded.chunks())
        decode_times.append(time.perf_counter() - started)
    return statistics.median(encode_times), statistics.median(decode_times), encoded.layout.total_bytes


def main() -> None:
    if sys.argv[1:] == ["--sink"]:
        _sink()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hospitals", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run, the first being a warm-up")
    parser.add_argument("--model", default="resnet18", choices=["cnn", "resnet18"])
    parser.add_argument("--server-arg", action="append", default=[], help="extra fed-server argument (repeatable)")
    parser.add_argument("--rtt-ms", type=float, help="reach the coordinator over an emulated link of this round trip")
    parser.add_argument("--rate-mbit", type=float, help="with --rtt-ms: each hospital's link rate, each direction")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("round_overhead.json"))
    args = parser.parse_args()
    encode_s, decode_s, model_bytes = serde_seconds(args.model)
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        results = [measure(n, args.rounds, args.model, Path(tmp), args.server_arg, args.rtt_ms, args.rate_mbit)
                   for n in args.hospitals]  # fmt: skip
    for r in results:
        r["loopback_floor_s"] = loopback_seconds(int(r["bytes_per_round"]))
    machine = (
        f"medfed {__version__}, torch {torch.__version__}, grpcio {grpc.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {torch.get_num_threads()} CPU threads"
    )
    summary = {
        "machine": machine, "model": args.model, "model_bytes": model_bytes, "rounds": args.rounds,
        "server_args": args.server_arg, "serialize_s": encode_s, "deserialize_s": decode_s,
        "link": {"rtt_ms": args.rtt_ms, "rate_mbit": args.rate_mbit} if args.rtt_ms is not None else "loopback",
        "import_floor_mb": import_floor_mb(), "results": results,
    }  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(machine)
    print(f"model {args.model} ({model_bytes / MIB:.1f} MiB), --local-epochs 0, {args.rounds} rounds (first left out)")
    if args.rtt_ms is not None:
        rate = f"{args.rate_mbit:g} Mbit/s per hospital" if args.rate_mbit else "no rate cap"
        print(f"link: {args.rtt_ms:g} ms round trip, {rate} (bench/link_proxy.py)")
    print(f"serialise once: {encode_s * 1000:.1f} ms, deserialise once: {decode_s * 1000:.1f} ms")
    print(f"importing the coordinator's modules alone: {summary['import_floor_mb']:.0f} MB peak RSS\n")
    print("| hospitals | median round (s) | min (s) | max (s) | MB moved per round | loopback floor (s) "
          "| link floor (s) | coordinator peak RSS (MB) | its PyTorch helper's peak RSS (MB) | hospital peak RSS (MB) |"
          "\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in results:
        floor = f"{r['link_floor_s']:.2f}" if r["link_floor_s"] else "-"
        print(
            f"| {r['hospitals']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} "
            f"| {r['bytes_per_round'] / 1e6:.0f} | {r['loopback_floor_s']:.3f} | {floor} "
            f"| {r['coordinator_peak_rss_mb']:.0f} | {r['model_helper_peak_rss_mb']:.0f} "
            f"| {r['hospital_peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
