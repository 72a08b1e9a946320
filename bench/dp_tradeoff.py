"""Accuracy against privacy budget ε on the demo dataset, for every DP mode medfed has.

Each configuration is a real federation: one fed-server and three fed-client processes on loopback,
the demo's data (scikit-learn digits, three hospitals each missing one digit), the GroupNorm CNN that
DP needs, and the same rounds and epochs. The table reports the final global test accuracy and the
largest ε in use after the last round (δ = 1e-5, RDP accountant):

    python bench/dp_tradeoff.py                 (about 4 minutes on 2 cores)
    python bench/dp_tradeoff.py --rounds 10 --out bench/dp_tradeoff

Writes a Markdown table to stdout and, under --out, results.json, results.csv and accuracy_vs_epsilon.png.
DP noise is drawn from OS entropy, so reruns differ by a few points of accuracy; ε does not vary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medfed.common import __version__
from medfed.common.data.partition import partition_to_folders
from medfed.common.data.sources import load_source
from medfed.server.run_dir import RunDir
from medfed.tools.local_run import ProcessGroup

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


@dataclass(frozen=True)
class Setting:
    mode: str
    label: str
    unit: str = "-"
    server: tuple[str, ...] = ()
    client: tuple[str, ...] = ()


def settings() -> list[Setting]:
    def dp_sgd(sigma: float) -> Setting:
        flags = ("--dp-sgd", "--dp-clip", "1.0", "--dp-noise-multiplier", str(sigma))
        return Setting("DP-SGD", f"C=1, σ={sigma}", "one patient", client=flags)

    def local(sigma: float, clip: float) -> Setting:
        flags = ("--dp-clip", str(clip), "--dp-noise-multiplier", str(sigma))
        return Setting("local DP", f"C={clip}, σ={sigma}", "one patient", client=flags)

    def central(sigma: float, clip: float) -> Setting:
        flags = ("--dp-central", "--dp-clip", str(clip), "--dp-noise-multiplier", str(sigma))
        return Setting("central DP", f"C={clip}, σ={sigma}", "one hospital", server=flags)

    return [
        Setting("no DP", "-"),
        dp_sgd(0.5),
        dp_sgd(0.8),
        dp_sgd(1.1),
        dp_sgd(2.0),
        local(1e-3, 1.0),
        local(1e-2, 1.0),
        local(1e-1, 1.0),
        local(1.1, 1.0),
        central(1e-2, 1.0),
        central(1e-1, 1.0),
        central(1.1, 1.0),
    ]


def run(setting: Setting, data: Path, work: Path, rounds: int, epochs: int, threads: int) -> dict[str, Any]:
    out, port_file = work / "run", work / "port"
    procs = ProcessGroup(work / "logs")
    try:
        procs.start(
            "server", "medfed.server", "--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file),
            "--rounds", str(rounds), "--min-clients", "3", "--model", "cnn_gn", "--local-epochs", str(epochs),
            "--test-data", str(data / "test"), "--out", str(out), *setting.server,
        )  # fmt: skip
        port = procs.wait_for_port("server", port_file, 120)
        for name in HOSPITALS:
            procs.start(
                name, "medfed.client", "--data", str(data / name), "--server", f"127.0.0.1:{port}", "--insecure",
                "--threads", str(threads), "--no-progress", "--dp-ledger", str(work / f"{name}-ledger.json"),
                *setting.client,
            )  # fmt: skip
        codes = procs.wait_all(timeout=1800)
    finally:
        procs.stop_all()
    if any(codes.values()):
        raise SystemExit(f"{setting}: a process failed: {codes}; logs in {procs.log_dir}")
    last = RunDir(out).history()[-1]
    if last.test is None:
        raise SystemExit(f"{setting}: the last round's model was not adopted; logs in {procs.log_dir}")
    eps = last.epsilon if last.privacy is not None else 0.0
    return {
        "mode": setting.mode,
        "setting": setting.label,
        "epsilon_protects": setting.unit,
        "accuracy": last.test.accuracy,
        "epsilon": math.inf if eps is None else eps,
        "delta": 1e-5 if last.privacy is not None else None,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    baseline = next(r["accuracy"] for r in results if r["mode"] == "no DP")
    ax.axhline(baseline, color="grey", linestyle="--", label=f"no DP ({baseline:.2f})")
    for mode in dict.fromkeys(r["mode"] for r in results if r["mode"] != "no DP"):
        points = sorted((r["epsilon"], r["accuracy"]) for r in results if r["mode"] == mode)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("ε after the last round (δ = 1e-5, log scale)")
    ax.set_ylabel("global test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy against privacy budget (digits, 3 hospitals, cnn_gn)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/dp_tradeoff"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="medfed-dp-") as tmp:
        data = Path(tmp) / "data"
        dataset = load_source("digits", seed=args.seed)
        partition_to_folders(dataset, data, clients=3, scheme="exclude-classes", seed=args.seed, source="digits")
        for i, setting in enumerate(settings()):
            result = run(setting, data, Path(tmp) / f"run{i}", args.rounds, args.local_epochs, threads=1)
            print(f"{result['mode']:<12} {result['setting']:<14} accuracy {result['accuracy']:.3f}  "
                  f"ε {result['epsilon']:.3g}", flush=True)  # fmt: skip
            results.append(result)
    (args.out / "results.json").write_text(
        json.dumps([{**r, "epsilon": r["epsilon"] if math.isfinite(r["epsilon"]) else None} for r in results], indent=1)
    )
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    plot(results, args.out / "accuracy_vs_epsilon.png")
    print(f"\nmedfed {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}; digits, 3 hospitals (exclude-classes), cnn_gn, {args.rounds} rounds x "
          f"{args.local_epochs} local epochs, batch 64, δ = 1e-5\n")  # fmt: skip
    print("| mode | setting | test accuracy | ε | ε protects |\n|---|---|---|---|---|")
    for r in results:
        eps = "0 (none)" if r["epsilon"] == 0 else f"{r['epsilon']:.3g}"
        print(f"| {r['mode']} | {r['setting']} | {r['accuracy']:.3f} | {eps} | {r['epsilon_protects']} |")


if __name__ == "__main__":
    main()
