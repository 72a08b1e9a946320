"""The study's comparison: one table (JSON, CSV, Markdown) and one bar chart, from the models' outcomes."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfed.common import files
from medfed.common.data.folders import DatasetInfo
from medfed.server.report import plots
from medfed.tools.study.baselines import Outcome

STUDY_JSON, STUDY_CSV, CHART, REPORT = "study.json", "study.csv", "comparison.png", "report.md"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _csv(path: Path, outcomes: Sequence[Outcome], classes: Sequence[str]) -> None:
    with files.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "train_images", "accuracy", "macro_auc", *(f"accuracy_{c}" for c in classes)])
        for o in outcomes:
            writer.writerow([o.name, o.train_images, _fmt(o.accuracy), _fmt(o.auc),
                             *(_fmt(o.per_class_accuracy.get(c)) for c in classes)])  # fmt: skip


def _markdown(
    outcomes: Sequence[Outcome],
    info: DatasetInfo,
    train_classes: Mapping[str, Sequence[int]],
    settings: Mapping[str, Any],
) -> str:
    classes = list(info.class_names)
    lines = [
        f"# Study: each hospital alone vs the federation vs all data pooled ({info.dataset})",
        "",
        f"Model {settings['model']}, {settings['epochs']} epochs in total for every model "
        f"({settings['rounds']} rounds x {settings['local_epochs']} local epoch(s) in the federation), "
        f"Adam lr {settings['lr']}, batch size {settings['batch_size']}, seed {settings['seed']}; "
        "every model is tested on the same held-out test set.",
        "",
        *_attack_lines(settings),
        "| model | training images | accuracy | macro AUC | " + " | ".join(classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    for o in outcomes:
        per_class = " | ".join(_fmt(o.per_class_accuracy.get(c)) for c in classes)
        lines.append(f"| {o.name} | {o.train_images} | {_fmt(o.accuracy)} | {_fmt(o.auc)} | {per_class} |")
    lines += ["", f"![comparison]({CHART})", ""]
    federated = [o for o in outcomes if o.name.startswith("federated")]
    for hospital, present in sorted(train_classes.items()):
        unseen = [classes[c] for c in range(len(classes)) if c not in present]
        local = next((o for o in outcomes if o.name == f"local {hospital}"), None)
        if not unseen or local is None or not federated:
            continue
        for name in unseen:
            arms = ", ".join(f"{o.name} {_fmt(o.per_class_accuracy.get(name))}" for o in federated)
            lines.append(
                f"- {hospital} has no {name} images: alone it recognises {_fmt(local.per_class_accuracy.get(name))} "
                f"of them; {arms}."
            )
    strategies = list(settings.get("strategies", ["fedavg"]))
    folders = ["federated"] if len(strategies) == 1 else [f"federated-{s}" for s in strategies]
    links = ", ".join(f"[{f}/report.md]({f}/report.md)" for f in folders)
    lines += ["", f"Each federated run's own report (curves per round, confusion matrix, per hospital): {links}.", ""]
    return "\n".join(lines)


def _attack_lines(settings: Mapping[str, Any]) -> list[str]:
    attackers = list(settings.get("attacker_names", []))
    if not attackers:
        return []
    return [
        f"In every federated run, {', '.join(attackers)} simulated a poisoning attack (`--simulate-attack "
        f"{settings['attack']}`); the local and pooled baselines train on every hospital's data as it is.",
        "",
    ]


def write_study(
    out: Path,
    outcomes: Sequence[Outcome],
    info: DatasetInfo,
    train_classes: Mapping[str, Sequence[int]],
    *,
    settings: Mapping[str, Any],
) -> list[Path]:
    classes = list(info.class_names)
    payload = {"dataset": info.dataset, "class_names": classes, "settings": dict(settings),
               "train_classes": {k: list(v) for k, v in train_classes.items()},
               "models": [o.as_dict() for o in outcomes]}  # fmt: skip
    files.write_text(out / STUDY_JSON, json.dumps(payload, indent=2) + "\n")
    _csv(out / STUDY_CSV, outcomes, classes)
    groups = ["accuracy", "macro AUC", *(f"acc. {c}" for c in classes)]
    bars = {o.name: [o.accuracy, o.auc, *(o.per_class_accuracy.get(c) for c in classes)] for o in outcomes}
    title = f"{info.dataset}: alone, federated, pooled"
    if settings.get("attacker_names"):
        title += f" ({', '.join(settings['attacker_names'])} simulating {settings['attack']} when federated)"
    plots.grouped_bars(out / CHART, title, groups, bars, "on the test set")
    files.write_text(out / REPORT, _markdown(outcomes, info, train_classes, settings))
    return [out / REPORT, out / STUDY_JSON, out / STUDY_CSV, out / CHART]
