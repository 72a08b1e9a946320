"""What compressed updates save and cost: the fed-demo federation once per update encoding and seed.

Each run is the offline demo (digits, three non-IID hospitals, each missing one class; small CNN;
real fed-server and fed-client processes over mutual TLS on loopback) with the coordinator asking for
``--update-encoding`` lossless, fp16, bf16 or int8. Bytes are the update bytes the coordinator
received per round (from history.jsonl); accuracy and macro AUC are the final global model's on the
held-out test split. The same seeds give every encoding the same data, initial model and batches, so
the differences are the encoding's.

    python bench/compression.py --seeds 0 1 2          (from the repository root)

Results go to stdout as a Markdown table and to bench/compression.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from medfed.common import __version__
from medfed.common.data.partition import TEST_FOLDER, partition_to_folders
from medfed.common.data.sources import load_source
from medfed.common.limits import ENCODINGS
from medfed.server.run_dir import RunDir
from medfed.tools.local_run import run_locally


def run(encoding: str, seed: int, rounds: int, model: str, work: Path) -> dict[str, Any]:
    out = work / f"{encoding}-{seed}"
    dataset = load_source("digits", seed=seed)
    manifests = partition_to_folders(dataset, out / "data", clients=3, scheme="exclude-classes", seed=seed)
    hospitals = {name: out / "data" / name for name in manifests if name != TEST_FOLDER}
    server_args = ["--rounds", str(rounds), "--model", model, "--local-epochs", "1", "--seed", str(seed),
                   "--update-encoding", encoding]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        run_locally(out, hospitals, out / "data" / TEST_FOLDER, out / "run", server_args)
    history = RunDir(out / "run").history()
    if any(r.num_clients != 3 for r in history):
        raise SystemExit(f"{encoding}, seed {seed}: a round went without a hospital; see {out}")
    last = history[-1].test
    if last is None:
        raise SystemExit(f"{encoding}, seed {seed}: the last round's model was not adopted; see {out}")
    return {"encoding": encoding, "seed": seed, "accuracy": last.accuracy, "auc": last.auc,
            "bytes_up_per_round": statistics.median(r.bytes_up for r in history),
            "bytes_down_per_round": statistics.median(r.bytes_down for r in history)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="cnn", choices=["cnn", "resnet18"])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("compression.json"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="medfed-compression-") as tmp:
        for seed in args.seeds:
            for encoding in ENCODINGS:
                result = run(encoding, seed, args.rounds, args.model, Path(tmp))
                print(f"{encoding}, seed {seed}: accuracy {result['accuracy']:.4f}, "
                      f"{result['bytes_up_per_round'] / 1e6:.2f} MB up per round", flush=True)  # fmt: skip
                runs.append(result)
    rows = []
    baseline = {r["seed"]: r for r in runs if r["encoding"] == "lossless"}
    for encoding in ENCODINGS:
        mine = [r for r in runs if r["encoding"] == encoding]
        rows.append({
            "encoding": encoding,
            "bytes_up_per_round": statistics.median(r["bytes_up_per_round"] for r in mine),
            "accuracy_mean": statistics.mean(r["accuracy"] for r in mine),
            "auc_mean": statistics.mean(r["auc"] for r in mine),
            "accuracy_change_mean": statistics.mean(r["accuracy"] - baseline[r["seed"]]["accuracy"] for r in mine),
            "accuracy_change_worst": min(r["accuracy"] - baseline[r["seed"]]["accuracy"] for r in mine),
        })  # fmt: skip
    python = f"Python {platform.python_version()}, {platform.machine()}"
    machine = f"medfed {__version__}, torch {torch.__version__}, {python}"
    args.out.write_text(json.dumps({"machine": machine, "model": args.model, "rounds": args.rounds,
                                    "seeds": args.seeds, "rows": rows, "runs": runs}, indent=1) + "\n")  # fmt: skip
    lossless = rows[0]["bytes_up_per_round"]
    print(f"\n{machine}; fed-demo data, {args.model}, {args.rounds} rounds, seeds {args.seeds}\n")
    print("| encoding | update bytes per round | of lossless | final accuracy (mean) | macro AUC (mean) "
          "| accuracy change vs lossless (mean / worst seed) |\n|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['encoding']} | {r['bytes_up_per_round']:,.0f} | {r['bytes_up_per_round'] / lossless:.0%} "
              f"| {r['accuracy_mean']:.4f} | {r['auc_mean']:.4f} "
              f"| {r['accuracy_change_mean']:+.4f} / {r['accuracy_change_worst']:+.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
