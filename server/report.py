"""The run report the coordinator writes beside history.jsonl when the last round is done.

Everything here is computed from history.jsonl (so a resumed run reports every round) and from what
hospitals chose to tell: the classes in their training data (for "accuracy on the classes hospital A
has", the reference study's measure) and, without DP, the global model's accuracy on their own
validation images (federated evaluation).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfed.common import files
from medfed.common.data.folders import DatasetInfo

REPORT_FILE = "report.md"
CURVES_FILE = "accuracy_loss.png"
PER_CLASS_FILE = "per_class_accuracy.png"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
REPORT_FILES = (REPORT_FILE, CURVES_FILE, PER_CLASS_FILE, CONFUSION_PNG, CONFUSION_CSV)


def class_subset_accuracy(confusion: Sequence[Sequence[int]], classes: Sequence[int]) -> float | None:
    """Accuracy on the test images whose true class is one of ``classes``."""
    total = sum(sum(confusion[c]) for c in classes)
    return sum(confusion[c][c] for c in classes) / total if total else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float | None]]:
    return [r["round"] for r in history], [r.get(key) for r in history]


def _hospital_series(
    history: Sequence[Mapping[str, Any]], key: str
) -> dict[str, tuple[list[float], list[float | None]]]:
    names = sorted({n for r in history for n in r.get("client_metrics", {})})
    out = {}
    for name in names:
        # a hospital evaluates the model it receives for round r: the global model after round r - 1
        points = [
            (r["round"] - 1, r["client_metrics"][name].get(key)) for r in history if name in r.get("client_metrics", {})
        ]
        if any(v is not None for _, v in points):
            out[f"{name} (own validation)"] = ([p[0] for p in points], [p[1] for p in points])
    return out


def _write_confusion_csv(path: Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
    with files.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix, strict=True):
            writer.writerow([name, *row])


def write_report(
    directory: Path,
    history: Sequence[Mapping[str, Any]],
    info: DatasetInfo,
    hospital_classes: Mapping[str, Sequence[int]],
    *,
    title: str,
) -> list[Path]:
    """Plots, the final confusion matrix and report.md; returns the files written."""
    from medfed.common import plots  # matplotlib is loaded once the run is over, not for all of it

    if not history:
        return []
    names = list(info.class_names)
    written: list[Path] = []
    evaluated = [r for r in history if "accuracy" in r]  # a failed round has no test figures
    tested = bool(evaluated)
    accuracy_panel: dict[str, tuple[list[float], list[float | None]]] = {}
    if tested:
        accuracy_panel = {"test accuracy": _series(history, "accuracy"), "test macro AUC": _series(history, "auc")}
    plots.line_panels(
        directory / CURVES_FILE,
        f"{title}: the global model after each round",
        [
            ("accuracy / AUC", accuracy_panel, _hospital_series(history, "global_val_accuracy")),
            ("loss", {"test loss": _series(history, "loss")} if tested else {},
             _hospital_series(history, "global_val_loss")),
        ],
    )  # fmt: skip
    written.append(directory / CURVES_FILE)
    last = evaluated[-1] if tested else history[-1]
    if tested:
        per_class = {
            name: ([r["round"] for r in history], [r.get("per_class_accuracy", {}).get(name) for r in history])
            for name in names
        }
        plots.small_multiples(directory / PER_CLASS_FILE, f"{title}: test accuracy per class", per_class, "accuracy")
        plots.confusion(directory / CONFUSION_PNG, last["confusion_matrix"], names, f"{title}: round {last['round']}")
        _write_confusion_csv(directory / CONFUSION_CSV, last["confusion_matrix"], names)
        written += [directory / PER_CLASS_FILE, directory / CONFUSION_PNG, directory / CONFUSION_CSV]
    path = directory / REPORT_FILE
    files.write_text(path, _markdown(history, info, hospital_classes, title=title, tested=tested))
    return [path, *written]


def _markdown(
    history: Sequence[Mapping[str, Any]],
    info: DatasetInfo,
    hospital_classes: Mapping[str, Sequence[int]],
    *,
    title: str,
    tested: bool,
) -> str:
    evaluated = [r for r in history if "accuracy" in r]
    last = evaluated[-1] if evaluated else history[-1]
    names = list(info.class_names)
    hospitals = sorted({n for r in history for n in r.get("clients", [])})
    lines = [
        f"# {title}",
        "",
        f"{len(history)} rounds on {info.dataset} ({len(names)} classes: {', '.join(names)}), "
        f"{len(hospitals)} hospitals: {', '.join(hospitals)}.",
        "",
    ]
    failed = [r for r in history if "failed" in r]
    if failed:
        lines += [f"{len(failed)} round(s) failed and kept the previous global model:", ""]
        lines += [f"- round {r['round']}: {r['failed']}" for r in failed] + [""]
    if tested:
        lines += [
            f"## Global model after round {last['round']}, on the coordinator's test set",
            "",
            "| accuracy | macro AUC | loss | test images |",
            "|---|---|---|---|",
            f"| {_fmt(last['accuracy'])} | {_fmt(last.get('auc'))} | {_fmt(last['loss'])} | {last['test_examples']} |",
            "",
            "| class | test accuracy | hospitals whose training data has it |",
            "|---|---|---|",
        ]
        for c, name in enumerate(names):
            having = [h for h, classes in sorted(hospital_classes.items()) if c in classes]
            lines.append(f"| {name} | {_fmt(last['per_class_accuracy'].get(name))} | {', '.join(having) or '-'} |")
        lines += ["", f"![accuracy and loss]({CURVES_FILE})", f"![per-class accuracy]({PER_CLASS_FILE})",
                  f"![confusion matrix]({CONFUSION_PNG}) (counts in {CONFUSION_CSV})", ""]  # fmt: skip
    else:
        lines += ["No --test-data was given, so the global model was not tested centrally.", "",
                  f"![accuracy and loss]({CURVES_FILE})", ""]  # fmt: skip
    lines += [
        "## Per hospital",
        "",
        "| hospital | classes in its training data | test accuracy on those classes | rounds taken part in | "
        "global model's accuracy on its own validation images (last round) |",
        "|---|---|---|---|---|",
    ]
    for name in hospitals:
        classes = hospital_classes.get(name)
        subset = class_subset_accuracy(last["confusion_matrix"], classes) if tested and classes else None
        taken = sum(name in r.get("clients", []) for r in history)
        own = [
            r["client_metrics"][name].get("global_val_accuracy") for r in history if name in r.get("client_metrics", {})
        ]
        shown = ", ".join(names[c] for c in classes) if classes else "not reported"
        lines.append(f"| {name} | {shown} | {_fmt(subset)} | {taken} | {_fmt(own[-1] if own else None)} |")
    lines.append("")
    return "\n".join(lines)
