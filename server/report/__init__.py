"""The run report the coordinator writes beside history.jsonl when the last round is done: plots
(``plots``), report.md (``markdown``) and the final confusion matrix as CSV.

Everything here is computed from history.jsonl (so a resumed run reports every round) and from what
hospitals chose to tell: the classes in their training data (for "accuracy on the classes hospital A
has", the reference study's measure) and, without DP, the global model's accuracy on their own
validation images (federated evaluation).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from medfed.common import files
from medfed.common.data.folders import DatasetInfo
from medfed.server.history import RoundRecord, TestResult
from medfed.server.report.markdown import markdown
from medfed.server.run_dir import CONFUSION_CSV, CONFUSION_PNG, CURVES_FILE, PER_CLASS_FILE, REPORT_FILE

Series = tuple[list[float], list[float | None]]


def _series(history: Sequence[RoundRecord], figure: Callable[[TestResult], float | None]) -> Series:
    """A test-set figure per round (None where a round has none: it failed)."""
    return [r.round for r in history], [figure(r.test) if r.test is not None else None for r in history]


def _class_accuracy(name: str) -> Callable[[TestResult], float | None]:
    return lambda test: test.per_class_accuracy.get(name)


def _hospital_series(history: Sequence[RoundRecord], key: str) -> dict[str, Series]:
    names = sorted({n for r in history for n in r.client_metrics})
    out = {}
    for name in names:
        # a hospital evaluates the model it receives for round r: the global model after round r - 1
        points = [(r.round - 1, r.client_metrics[name].get(key)) for r in history if name in r.client_metrics]
        if any(v is not None for _, v in points):
            out[f"{name} (own validation)"] = ([float(p[0]) for p in points], [p[1] for p in points])
    return out


def _write_confusion_csv(path: Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
    with files.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix, strict=True):
            writer.writerow([name, *row])


def write_report(
    directory: Path,
    history: Sequence[RoundRecord],
    info: DatasetInfo,
    hospital_classes: Mapping[str, Sequence[int]],
    *,
    title: str,
    evaluation_note: str = "",
) -> list[Path]:
    """Plots, the final confusion matrix and report.md; returns the files written."""
    from medfed.server.report import plots  # matplotlib is loaded once the run is over, not for all of it

    if not history:
        return []
    names = list(info.class_names)
    written: list[Path] = []
    evaluated = [r.test for r in history if r.test is not None]  # a failed round has no test figures
    accuracy_panel: dict[str, Series] = {}
    if evaluated:
        accuracy_panel = {
            "test accuracy": _series(history, lambda t: t.accuracy),
            "test macro AUC": _series(history, lambda t: t.auc),
        }
    plots.line_panels(
        directory / CURVES_FILE,
        f"{title}: the global model after each round",
        [
            ("accuracy / AUC", accuracy_panel, _hospital_series(history, "global_val_accuracy")),
            ("loss", {"test loss": _series(history, lambda t: t.loss)} if evaluated else {},
             _hospital_series(history, "global_val_loss")),
        ],
    )  # fmt: skip
    written.append(directory / CURVES_FILE)
    if evaluated:
        last = next(r for r in reversed(history) if r.test is not None)
        per_class = {name: _series(history, _class_accuracy(name)) for name in names}
        plots.small_multiples(directory / PER_CLASS_FILE, f"{title}: test accuracy per class", per_class, "accuracy")
        matrix = evaluated[-1].confusion_matrix
        plots.confusion(directory / CONFUSION_PNG, matrix, names, f"{title}: round {last.round}")
        _write_confusion_csv(directory / CONFUSION_CSV, matrix, names)
        written += [directory / PER_CLASS_FILE, directory / CONFUSION_PNG, directory / CONFUSION_CSV]
    path = directory / REPORT_FILE
    files.write_text(path, markdown(history, info, hospital_classes, title=title, evaluation_note=evaluation_note))
    return [path, *written]
