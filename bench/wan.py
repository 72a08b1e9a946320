"""Rounds over emulated hospital links: bench/round_overhead.py's workload (ResNet-18, no training, a
real fed-server and real fed-client processes) run on loopback and through bench/link_proxy.py, for each
link and number of hospitals asked for, with lossless and int8 updates on rate-capped links.

    python bench/wan.py --hospitals 3 10 --rounds 5 --out bench/wan

A link is ``loopback``, ``RTT`` (a round trip in ms, no rate cap) or ``RTT:RATE`` (each hospital's link
capped at RATE Mbit/s in each direction). Writes ``OUT/medfed.json`` (every figure, with the machine)
and prints the table; bench/wan_report.py draws it beside Flower's figures from bench/flower_round.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch
from round_overhead import measure  # bench/ is on sys.path when run as a script

from medfed.common import __version__

DEFAULT_LINKS = ("loopback", "50", "50:100", "200", "200:100")


def parse_link(text: str) -> tuple[float | None, float | None]:
    """``loopback`` -> (None, None); ``50`` -> (50, None); ``50:100`` -> (50, 100)."""
    if text == "loopback":
        return None, None
    rtt, _, rate = text.partition(":")
    return float(rtt), float(rate) if rate else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hospitals", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--links", nargs="+", default=list(DEFAULT_LINKS))
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run, the first being a warm-up")
    parser.add_argument("--model", default="resnet18", choices=["cnn", "resnet18"])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("wan"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for link in args.links:
        rtt, rate = parse_link(link)
        encodings = ("lossless", "int8") if rate else ("lossless",)
        for encoding in encodings:
            for hospitals in args.hospitals:
                extra = [] if encoding == "lossless" else ["--update-encoding", encoding]
                started = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="medfed-wan-") as tmp:
                    result = measure(hospitals, args.rounds, args.model, Path(tmp), extra, rtt, rate)
                row = {"link": link, "rtt_ms": rtt, "rate_mbit": rate, "encoding": encoding, **result}
                rows.append(row)
                floor = f", link floor {row['link_floor_s']:.2f} s" if row["link_floor_s"] else ""
                print(f"{link:>9} {encoding:>8} {hospitals:3d} hospitals: median round {row['median_s']:.3f} s"
                      f"{floor}, coordinator {row['coordinator_peak_rss_mb']:.0f} MB "
                      f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
                (args.out / "medfed.json").write_text(json.dumps(summary(args, rows), indent=1) + "\n")


def summary(args: argparse.Namespace, rows: list[dict[str, object]]) -> dict[str, object]:
    machine = (
        f"medfed {__version__}, torch {torch.__version__}, grpcio {grpc.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {torch.get_num_threads()} CPU threads"
    )
    return {"machine": machine, "model": args.model, "rounds": args.rounds, "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d"), "rows": rows}  # fmt: skip


if __name__ == "__main__":
    main()
