"""Secure aggregation against plain FedAvg on the PneumoniaMNIST study split: same seed, same hospitals,
same rounds, real fed-server and fed-client processes over mutual TLS, the one difference being
--secure-aggregation. Writes per-round test accuracy and macro AUC of both runs (JSON and a PNG).

    python bench/secure_accuracy.py --data-root ../shared/data --rounds 5 --out bench/secure_accuracy.json

The study split: three hospitals, Dirichlet alpha 0.3 over labels, seed 0 (as bench/strategies_pneumonia_3),
the small CNN, one local epoch per round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from medfed.server.run_dir import RunDir
from medfed.tools.local_run import ProcessGroup

HOSPITALS = ["hospital_a", "hospital_b", "hospital_c"]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, text=True)


def federate(work: Path, data: Path, pki: Path, out: Path, rounds: int, secure: bool) -> list[dict[str, float]]:
    procs = ProcessGroup(work / f"logs-{out.name}")
    port_file = work / f"{out.name}.port"
    tls = ["--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"), "--tls-ca", str(pki / "ca.crt")]
    try:
        procs.start("server", "medfed.server", *tls, "--address", "127.0.0.1:0", "--port-file", str(port_file),
                    "--rounds", str(rounds), "--min-clients", "3", "--seed", "0", "--test-data", str(data / "test"),
                    "--out", str(out), "--dashboard-address", "off", *(["--secure-aggregation"] * secure))  # fmt: skip
        port = procs.wait_for_port("server", port_file, 120)
        for name in HOSPITALS:
            procs.start(name, "medfed.client", "--data", str(data / name), "--server", f"127.0.0.1:{port}",
                        "--tls-cert", str(pki / f"{name}.crt"), "--tls-key", str(pki / f"{name}.key"),
                        "--tls-ca", str(pki / "ca.crt"), "--threads", "1", "--no-progress")  # fmt: skip
        codes = procs.wait_all(timeout=3600)
    finally:
        procs.stop_all()
    if any(codes.values()):
        raise SystemExit(f"a process failed: {codes}; logs in {procs.log_dir}")
    rows = []
    for record in RunDir(out).history():
        assert record.test is not None and sorted(record.clients) == HOSPITALS, record
        rows.append({"round": record.round, "accuracy": record.test.accuracy, "auc": record.test.auc or 0.0,
                     "duration_s": record.duration_s})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="folder with pneumoniamnist.npz")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/secure_accuracy.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medfed-secure-") as tmp:
        work = Path(tmp)
        data, pki = work / "parts", work / "pki"
        cli("medfed.tools.partition", "--source", "pneumoniamnist", "--data-root", str(args.data_root), "--out",
            str(data), "--clients", "3", "--scheme", "dirichlet", "--alpha", "0.3", "--seed", "0")  # fmt: skip
        cli("medfed.tools.certs", "init", "--dir", str(pki))
        cli("medfed.tools.certs", "server", "--dir", str(pki), "--host", "127.0.0.1")
        for name in HOSPITALS:
            cli("medfed.tools.certs", "client", "--dir", str(pki), "--name", name)
        runs = {}
        for label, secure in (("plain", False), ("secure", True)):
            runs[label] = federate(work, data, pki, work / label, args.rounds, secure)
            print(f"{label}: " + ", ".join(f"round {r['round']} {r['accuracy']:.4f}" for r in runs[label]), flush=True)
    args.out.write_text(json.dumps({"dataset": "pneumoniamnist", "rounds": args.rounds, "runs": runs}, indent=1) + "\n")
    from medfed.server.report import plots

    series = {
        m: {k: ([r["round"] for r in v], [r[m] for r in v]) for k, v in runs.items()} for m in ("accuracy", "auc")
    }
    plots.line_panels(args.out.with_suffix(".png"), "PneumoniaMNIST, 3 hospitals (alpha 0.3): plain and secure FedAvg",
                      [("test accuracy", series["accuracy"], {}), ("macro AUC", series["auc"], {})])  # fmt: skip
    print("\n| round | plain accuracy | secure accuracy | plain AUC | secure AUC |\n|---|---|---|---|---|")
    for p, s in zip(runs["plain"], runs["secure"], strict=True):
        print(f"| {p['round']} | {p['accuracy']:.4f} | {s['accuracy']:.4f} | {p['auc']:.4f} | {s['auc']:.4f} |")


if __name__ == "__main__":
    main()
