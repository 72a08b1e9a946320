"""The table and chart of rounds over hospital links: bench/wan.py's medfed figures beside
bench/flower_round.py's Flower figures (both in OUT, default bench/wan/), with each link's floor.

    python bench/wan_report.py            (writes bench/wan/wan.md and bench/wan/wan.png)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def label(link: str) -> str:
    if link == "loopback":
        return "loopback"
    rtt, _, rate = link.partition(":")
    return f"{rtt} ms" + (f", {rate} Mbit/s" if rate else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("wan"))
    args = parser.parse_args()
    medfed = json.loads((args.out / "medfed.json").read_text())
    flower_path = args.out / "flower.json"
    flower = json.loads(flower_path.read_text()) if flower_path.exists() else {"rows": []}
    theirs = {(r["link"], r["hospitals"]): r for r in flower["rows"]}
    loopback = {r["hospitals"]: r["median_s"] for r in medfed["rows"] if r["link"] == "loopback"}
    fifty = {r["hospitals"]: r["median_s"] for r in medfed["rows"] if r["link"] == "50" and r["encoding"] == "lossless"}
    lines = [
        f"medfed: {medfed['machine']}; {medfed['date']}; `{medfed['command']}`",
        f"Flower {flower.get('flower', '-')}: {flower.get('date', '-')}; `{flower.get('command', '-')}`",
        "",
        "| link | update | hospitals | medfed median round (s) | Flower (s) | link floor (s) | medfed / floor "
        "| medfed / its loopback | medfed / its 50 ms | coordinator peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in medfed["rows"]:
        other = theirs.get((r["link"], r["hospitals"])) if r["encoding"] == "lossless" else None
        floor = r.get("link_floor_s")
        cells = [
            label(r["link"]), r["encoding"], str(r["hospitals"]), f"{r['median_s']:.2f}",
            f"{other['median_s']:.2f}" if other else "-", f"{floor:.2f}" if floor else "-",
            f"{r['median_s'] / floor:.2f}x" if floor else "-",
            f"{r['median_s'] / loopback[r['hospitals']]:.2f}x" if r["hospitals"] in loopback and not floor else "-",
            f"{r['median_s'] / fifty[r['hospitals']]:.2f}x" if r["hospitals"] in fifty and not floor else "-",
            f"{r['coordinator_peak_rss_mb']:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    (args.out / "wan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    draw(medfed["rows"], theirs, args.out / "wan.png")


def draw(rows: list[dict[str, Any]], theirs: dict[tuple[str, int], dict[str, Any]], path: Path) -> None:
    """Median round per link (lossless updates), medfed beside Flower and the link floor, in seconds on a
    log scale (loopback rounds take under a second, rate-capped ones several), each bar labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lossless = [r for r in rows if r["encoding"] == "lossless"]
    series = {
        "medfed": [r["median_s"] for r in lossless],
        "Flower 1.39": [theirs.get((r["link"], r["hospitals"]), {}).get("median_s") for r in lossless],
        "link floor": [r["link_floor_s"] for r in lossless],
    }
    colours = {"medfed": "#1f77b4", "Flower 1.39": "#ff7f0e", "link floor": "#9e9e9e"}
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(lossless) + 2), 5.2), layout="constrained")
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - 1) * width for i in range(len(lossless))]
        heights = [v if v is not None else 0.0 for v in values]
        drawn = ax.bar(xs, heights, width, label=name, color=colours[name])
        ax.bar_label(drawn, labels=[f"{v:.1f}" if v is not None else "" for v in values], fontsize=7, rotation=90,
                     padding=2)  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylim(0.3, max(v for values in series.values() for v in values if v) * 4)
    ax.set_xticks(range(len(lossless)), [f"{label(r['link'])}\n{r['hospitals']} hospitals" for r in lossless],
                  fontsize=8)  # fmt: skip
    ax.set_ylabel("median round (s, log scale)")
    ax.set_title("A round of ResNet-18 without training, over emulated hospital links (lossless updates)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
