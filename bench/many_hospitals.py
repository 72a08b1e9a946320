"""Many hospitals at once against one coordinator: round time and coordinator memory for N hospitals.

A real fed-server process and N hospitals, each a full HospitalNode (its own gRPC channel, joining,
long-polling, heartbeating, training and uploading exactly as fed-client does). A fed-client process
holds PyTorch (about 600 MB), so 100 of them would not fit in this machine's memory: the hospitals run
as threads, 25 to a worker process. By default every hospital trains the small CNN for one epoch on
32 generated 8x8 images per round; ``--model resnet18 --local-epochs 0`` makes them pure
communication rounds with a 44.7 MB model instead. ``--strategies fedavg median multi-krum`` measures
each aggregation rule at each N (the robust rules keep every update of a round on disk, in the run
folder's update store, and combine them tensor by tensor). ``secure`` among the strategies is FedAvg
under secure aggregation (fed-server --secure-aggregation): coordinator and hospitals then use mutual
TLS with certificates made for the run, and every round runs the SecAgg+ stages.

    python bench/many_hospitals.py --hospitals 1 2 5 10 25 50 100 --rounds 4     (from the repository root)
    python bench/many_hospitals.py --model resnet18 --local-epochs 0 --hospitals 1 10 25 50 100 --rounds 4 \
        --out bench/many_hospitals_resnet18.json
    python bench/many_hospitals.py --model resnet18 --local-epochs 0 --hospitals 10 50 --rounds 4 \
        --strategies fedavg median multi-krum --out bench/many_hospitals_strategies.json
    python bench/many_hospitals.py --model resnet18 --local-epochs 0 --hospitals 3 10 25 --rounds 4 \
        --strategies fedavg secure --out bench/secure_aggregation_resnet18.json

Round 1 is a warm-up and is left out of the median. Coordinator peak RSS is the coordinator's own
peak RSS (VmHWM) as recorded in history.jsonl after its last round. A run counts only if every round
aggregated every hospital (no hospital missing, no process failing). The scale curve (round time and
coordinator memory against N) is drawn beside the JSON (--out with .png).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from medfed.common.data.folders import DatasetInfo
from medfed.common.data.partition import hospital_names, partition_to_folders
from medfed.common.data.sources import SourceDataset
from medfed.server.run_dir import RunDir
from medfed.tools.local_run import ProcessGroup

PER_PROCESS = 25


def tiny_dataset(hospitals: int, seed: int = 0) -> SourceDataset:
    rng = np.random.default_rng(seed)
    n = 32 * hospitals
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, size=(n, 8, 8), dtype=np.uint8)
    images[labels == 1, :4] += 100
    info = DatasetInfo(dataset="random", channels=1, class_names=("a", "b"), image_size=(8, 8))
    return SourceDataset(info, {"train": (images, labels)})


def measure(
    hospitals: int, rounds: int, work: Path, model: str, local_epochs: int, strategy: str = "fedavg"
) -> dict[str, Any]:
    data = work / f"data{hospitals}-{strategy}"
    partition_to_folders(tiny_dataset(hospitals), data, clients=hospitals, scheme="iid")
    names = hospital_names(hospitals)
    security = ["--insecure", "--strategy", strategy]
    pki_dir = ""
    if strategy == "secure":
        pki_dir = str(make_pki(work / f"pki{hospitals}", names))
        security = ["--tls-cert", f"{pki_dir}/server.crt", "--tls-key", f"{pki_dir}/server.key", "--tls-ca",
                    f"{pki_dir}/ca.crt", "--secure-aggregation", "--secure-clip", "10"]  # fmt: skip
    out, port_file = work / f"run{hospitals}-{strategy}", work / f"port{hospitals}-{strategy}"
    procs = ProcessGroup(work / f"logs{hospitals}-{strategy}")
    try:
        server = procs.start(
            "server", "medfed.server", *security, "--address", "127.0.0.1:0", "--port-file", str(port_file),
            "--rounds", str(rounds), "--min-clients", str(hospitals), "--model", model,
            "--local-epochs", str(local_epochs), "--dashboard-address", "off",
            "--batch-size", "16", "--out", str(out), "--round-timeout", "600",
        )  # fmt: skip
        port = procs.wait_for_port("server", port_file, 120)
        for i in range(0, hospitals, PER_PROCESS):
            group = ",".join(names[i : i + PER_PROCESS])
            procs.start(f"worker{i}", "bench.many_hospitals", "--worker", f"127.0.0.1:{port}", str(data), group,
                        pki_dir)  # fmt: skip
        while server.poll() is None and not procs.failed():  # a failed worker ends the wait at once
            time.sleep(0.5)
        codes = procs.wait_all(timeout=600)
    finally:
        procs.stop_all()
    if any(codes.values()):
        raise SystemExit(f"{hospitals} hospitals: a process failed: {codes}; logs in {procs.log_dir}")
    history = RunDir(out).history()
    complete = all(r.num_clients == hospitals and not r.missing for r in history)
    if not complete or len(history) != rounds:
        raise SystemExit(f"{hospitals} hospitals: not every round aggregated every hospital; see {out}")
    measured = [r.duration_s for r in history[1:]]
    return {"strategy": strategy, "hospitals": hospitals, "median_s": statistics.median(measured),
            "max_s": max(measured),
            "coordinator_peak_rss_mb": history[-1].server_peak_rss_mb,
            "model_bytes": history[-1].bytes_down // hospitals}  # fmt: skip


def make_pki(folder: Path, names: list[str]) -> Path:
    """A CA, the coordinator's certificate for 127.0.0.1 and one certificate per hospital, as fed-certs makes."""
    from medfed.common import pki

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = pki.make_ca()
    pki.write_public(folder / "ca.crt", ca)
    for name, hosts in [("server", ["127.0.0.1"]), *((n, None) for n in names)]:
        key, cert = pki.issue(ca_key, ca, name, server_hosts=hosts)
        pki.write_private_key(folder / f"{name}.key", key)
        pki.write_public(folder / f"{name}.crt", cert)
    return folder


def worker(server: str, data: Path, names: list[str], pki_dir: str = "") -> int:
    """Run one HospitalNode per name, each in a thread with its own channel; 0 when all finished. With
    ``pki_dir``, over mutual TLS with each hospital's certificate (for secure aggregation)."""
    import grpc
    import torch

    from medfed.client.connection import GrpcConnection
    from medfed.client.identity import Identity
    from medfed.client.node import HospitalNode
    from medfed.client.trainer import Trainer
    from medfed.common.cli import setup_logging
    from medfed.common.data.folders import load_folder
    from medfed.common.wire.options import channel_options
    from medfed.common.wire.proto import pb_grpc
    from medfed.common.wire.tls import channel_credentials

    setup_logging(False)
    torch.set_num_threads(1)
    failures: list[str] = []

    def run(name: str) -> None:
        folder = load_folder(data / name, require=("train",))
        identity = None
        if pki_dir:
            files = (Path(pki_dir) / f"{name}.crt", Path(pki_dir) / f"{name}.key", Path(pki_dir) / "ca.crt")
            channel = grpc.secure_channel(server, channel_credentials(*files), options=channel_options())
            identity = Identity.load(*files)
        else:
            channel = grpc.insecure_channel(server, options=channel_options())
        with channel:
            trainer = Trainer(folder, torch.device("cpu"), name=name, progress=False)
            connection = GrpcConnection(pb_grpc.FederationStub(channel), server=server, max_wait=300, tls=bool(pki_dir))
            node = HospitalNode(connection, folder, trainer, name=name, max_wait=300, identity=identity)
            try:
                node.run()
            except Exception as exc:
                failures.append(f"{name}: {exc}")

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


def import_floor_mb() -> float:
    """Peak RSS of a process that only imports the coordinator's modules (gRPC, numpy, ...): the floor."""
    code = "import medfed.server.app; from medfed.server.memory import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out)


def plot(results: list[dict[str, Any]], floor: float, path: Path, workload: str) -> None:
    from medfed.server.report import plots

    strategies = list(dict.fromkeys(r["strategy"] for r in results))
    rows = {s: [r for r in results if r["strategy"] == s] for s in strategies}
    ns = [r["hospitals"] for r in rows[strategies[0]]]
    model_mb = results[0]["model_bytes"] / 1e6
    times = {s: ([r["hospitals"] for r in rs], [r["median_s"] for r in rs]) for s, rs in rows.items()}
    rss = {s: ([r["hospitals"] for r in rs], [r["coordinator_peak_rss_mb"] for r in rs]) for s, rs in rows.items()}
    lines = {"300 MB + 4 x model": (ns, [300 + 4 * model_mb] * len(ns))}
    if set(strategies) - {"fedavg", "secure"}:
        lines["300 MB + 6 x model (robust rules)"] = (ns, [300 + 6 * model_mb] * len(ns))
    lines["importing the coordinator's modules"] = (ns, [floor] * len(ns))
    if len(strategies) == 1:
        times = {"median round": times[strategies[0]]}
        rss = {"coordinator peak RSS": rss[strategies[0]]}
    slowest = {"slowest round": (ns, [r["max_s"] for r in rows[strategies[0]]])} if len(strategies) == 1 else {}
    plots.line_panels(
        path,
        f"One coordinator, N hospitals ({workload})",
        [("median round time (s)", times, slowest), ("coordinator peak RSS (MB)", rss, lines)],
        xlabel="hospitals",
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4].split(","), *sys.argv[5:6]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hospitals", type=int, nargs="+", default=[1, 2, 5, 10, 25, 50, 100])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run, the first being a warm-up")
    parser.add_argument("--model", default="cnn", choices=["cnn", "resnet18"])
    parser.add_argument("--local-epochs", type=int, default=1, help="0: pure communication rounds")
    parser.add_argument("--out", type=Path, default=Path("bench/many_hospitals.json"))
    parser.add_argument("--strategies", nargs="+", default=["fedavg"], help="fed-server --strategy values to measure")
    args = parser.parse_args()
    model = "small CNN" if args.model == "cnn" else "ResNet-18"
    training = f"{args.local_epochs} local epoch(s) each" if args.local_epochs else "no local training"
    workload = f"{model}, {training}"
    with tempfile.TemporaryDirectory(prefix="medfed-many-") as tmp:
        results = []
        for strategy, n in ((s, n) for s in args.strategies for n in args.hospitals):
            result = measure(n, args.rounds, Path(tmp), args.model, args.local_epochs, strategy)
            print(f"{strategy}, {n} hospitals: median round {result['median_s']:.2f} s, coordinator peak RSS "
                  f"{result['coordinator_peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
            results.append(result)
    floor = import_floor_mb()
    summary = {"model": args.model, "local_epochs": args.local_epochs, "import_floor_mb": floor, "results": results}
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    plot(results, floor, args.out.with_suffix(".png"), workload)
    print(f"importing the coordinator's modules alone: {floor:.0f} MB peak RSS")
    print(f"\nPython {platform.python_version()}, {platform.machine()}; {workload} on 32 images of 8x8, "
          f"{args.rounds} rounds (first left out), every round aggregated every hospital\n")  # fmt: skip
    print("| strategy | hospitals | median round (s) | max (s) | coordinator peak RSS (MB) |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['strategy']} | {r['hospitals']} | {r['median_s']:.2f} | {r['max_s']:.2f} "
            f"| {r['coordinator_peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
