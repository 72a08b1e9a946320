"""One table and one chart from a strategy study run under several attack conditions.

Each condition is a fed-study output folder (``study.json``) with the same strategies as arms; this
reads them and writes, beside them, ``summary.md`` (test accuracy and macro AUC of every federated
arm under every condition, plus the local and pooled baselines of the clean run), ``summary.json`` and
``summary.png`` (accuracy and AUC per strategy, one bar per condition).

Beside the coordinator's test figures, each arm gets its honest hospitals' mean validation accuracy
of the model they received in the last round, as they evaluated it (``global_val_accuracy`` in the
arm's history): under FedBN that is the shared layers with each hospital's own normalisation, the
model FedBN is for, which the coordinator's test set cannot see.

    python bench/strategies_summary.py bench/strategies_pneumonia_3 clean sign_flip scale_100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {"clean": "no attacker", "sign_flip": "one hospital sign-flips", "scale_100": "one hospital scales x100"}


def hospital_validation(history: Path, attackers: list[str]) -> float | None:
    """The honest hospitals' mean ``global_val_accuracy`` in the arm's last round."""
    last = json.loads(history.read_text().splitlines()[-1])
    values = [m["global_val_accuracy"] for name, m in last["client_metrics"].items()
              if name not in attackers and "global_val_accuracy" in m]  # fmt: skip
    return sum(values) / len(values) if values else None


def load(folder: Path, conditions: list[str]) -> dict[str, Any]:
    studies = {c: json.loads((folder / c / "study.json").read_text()) for c in conditions}
    first = studies[conditions[0]]
    arms = [m["name"].removeprefix("federated ") for m in first["models"] if m["name"].startswith("federated")]
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for condition, study in studies.items():
        for model in study["models"]:
            if model["name"].startswith("federated"):
                name = model["name"].removeprefix("federated ").removeprefix("federated") or "fedavg"
                arm = folder / condition / (f"federated-{name}" if len(arms) > 1 else "federated")
                own = hospital_validation(arm / "history.jsonl", study["settings"]["attacker_names"])
                table.setdefault(name, {})[condition] = {"accuracy": model["accuracy"], "auc": model["auc"],
                                                         "hospital_val_accuracy": own}  # fmt: skip
    baselines = {m["name"]: {"accuracy": m["accuracy"], "auc": m["auc"], "train_images": m.get("train_images")}
                 for m in first["models"] if not m["name"].startswith("federated")}  # fmt: skip
    settings = first["settings"]
    return {"dataset": first["dataset"], "settings": {k: settings[k] for k in
            ("clients", "scheme", "alpha", "rounds", "local_epochs", "model", "lr", "batch_size", "seed")},
            "attackers": {c: s["settings"]["attacker_names"] for c, s in studies.items()},
            "strategies": arms, "federated": table, "baselines": baselines}  # fmt: skip


def markdown(summary: dict[str, Any], conditions: list[str]) -> str:
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    head = " | ".join(f"{LABELS.get(c, c)}: acc / AUC / hospitals' val acc" for c in conditions)
    lines = [f"| strategy | {head} |", "|---|" + "---|" * len(conditions)]
    for name in summary["strategies"]:
        row = summary["federated"][name]
        cells = " | ".join(
            f"{cell(row[c]['accuracy'])} / {cell(row[c]['auc'])} / {cell(row[c]['hospital_val_accuracy'])}"
            for c in conditions
        )
        lines.append(f"| {name} | {cells} |")
    lines += ["", "| baseline (clean data) | training images | acc / AUC |", "|---|---|---|"]
    for name, b in summary["baselines"].items():
        lines.append(f"| {name} | {b['train_images']} | {cell(b['accuracy'])} / {cell(b['auc'])} |")
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, Any], conditions: list[str], path: Path, title: str) -> None:
    names = summary["strategies"]
    panels = (("accuracy", "test accuracy"), ("auc", "test macro AUC"),
              ("hospital_val_accuracy", "hospitals' own\nvalidation accuracy"))  # fmt: skip
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.9 * len(names) + 4), 10), sharex=True, layout="constrained")
    width = 0.8 / len(conditions)
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for k, condition in enumerate(conditions):
            xs = [i + (k - (len(conditions) - 1) / 2) * width for i in range(len(names))]
            values = [summary["federated"][n][condition][metric] or 0.0 for n in names]
            ax.bar(xs, values, width, label=LABELS.get(condition, condition), color=f"C{k}")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(names)), names, rotation=20, ha="right")
    axes[0].set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(conditions), frameon=False)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("conditions", nargs="+")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    summary = load(args.folder, args.conditions)
    s = summary["settings"]
    scheme = f"dirichlet (alpha {s['alpha']:g})" if s["scheme"] == "dirichlet" else s["scheme"]
    setup = f"{s['clients']} hospitals, {scheme}, {s['model']}, {s['rounds']} rounds"
    title = args.title or f"{summary['dataset']}: {setup}"
    (args.folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.folder / "summary.md").write_text(markdown(summary, args.conditions))
    chart(summary, args.conditions, args.folder / "summary.png", title)
    print(markdown(summary, args.conditions))


if __name__ == "__main__":
    main()
