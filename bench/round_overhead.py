"""Round time of pure communication rounds: a real fed-server and N real fed-client processes on loopback.

The hospitals do no training (--local-epochs 0): each round streams the global model to every hospital
and back and aggregates, so the round time is the system's overhead. Data is generated (a few random
28x28 images per hospital); the model is ResNet-18 (11.2M parameters, 44.7 MB).

    python bench/round_overhead.py --hospitals 3 10 --rounds 6

Round 1 is a warm-up and is left out of the median. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from medfed.common import __version__
from medfed.common.data import DatasetInfo
from medfed.common.partition_cli import partition_to_folders
from medfed.common.processes import ProcessGroup
from medfed.common.sources import SourceDataset


def tiny_dataset(hospitals: int, seed: int = 0) -> SourceDataset:
    rng = np.random.default_rng(seed)
    n = 8 * hospitals
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 2
    info = DatasetInfo(dataset="random", channels=1, class_names=("a", "b"), image_size=(28, 28))
    return SourceDataset(info, {"train": (images, labels)})


def measure(hospitals: int, rounds: int, model: str, work: Path) -> dict[str, float]:
    data = work / f"data{hospitals}"
    partition_to_folders(tiny_dataset(hospitals), data, clients=hospitals, scheme="iid")
    names = sorted(p.name for p in data.iterdir())
    out, port_file = work / f"run{hospitals}", work / f"port{hospitals}"
    procs = ProcessGroup(work / f"logs{hospitals}")
    try:
        procs.start(
            "server", "medfed.server", "--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file),
            "--rounds", str(rounds), "--min-clients", str(hospitals), "--model", model, "--local-epochs", "0",
            "--out", str(out),
        )  # fmt: skip
        port = procs.wait_for_port("server", port_file, 120)
        for name in names:
            procs.start(
                name, "medfed.client", "--data", str(data / name), "--server", f"127.0.0.1:{port}", "--insecure",
                "--threads", "1", "--no-progress",
            )  # fmt: skip
        codes = procs.wait_all(timeout=1800)
    finally:
        procs.stop_all()
    if any(codes.values()):
        raise SystemExit(f"a process failed: {codes}; logs in {procs.log_dir}")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    measured = [r["duration_s"] for r in history[1:]]
    return {"hospitals": hospitals, "median_s": statistics.median(measured), "min_s": min(measured),
            "max_s": max(measured), "rounds_measured": len(measured)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hospitals", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run, the first being a warm-up")
    parser.add_argument("--model", default="resnet18", choices=["cnn", "resnet18"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        results = [measure(n, args.rounds, args.model, Path(tmp)) for n in args.hospitals]
    print(f"medfed {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {torch.get_num_threads()} CPU threads available to torch")  # fmt: skip
    print(f"model {args.model}, --local-epochs 0, {args.rounds} rounds (first one left out)\n")
    print("| hospitals | median round (s) | min (s) | max (s) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['hospitals']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |")


if __name__ == "__main__":
    main()
