"""report.md: what a reader of the run wants first (the final model on the test set, per class and per
hospital, failed rounds), with the plots beside it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medfed.common.data.folders import DatasetInfo
from medfed.server.history import RoundRecord
from medfed.server.run_dir import CONFUSION_CSV, CONFUSION_PNG, CURVES_FILE, PER_CLASS_FILE


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(
    history: Sequence[RoundRecord],
    info: DatasetInfo,
    hospital_classes: Mapping[str, Sequence[int]],
    *,
    title: str,
    evaluation_note: str = "",
) -> str:
    """``evaluation_note``: how the global model was evaluated when that needs saying (FedBN)."""
    evaluated = [r for r in history if r.test is not None]
    last = evaluated[-1] if evaluated else None
    test = last.test if last is not None else None
    names = list(info.class_names)
    hospitals = sorted({n for r in history for n in r.clients})
    lines = [
        f"# {title}",
        "",
        f"{len(history)} rounds on {info.dataset} ({len(names)} classes: {', '.join(names)}), "
        f"{len(hospitals)} hospitals: {', '.join(hospitals)}.",
        "",
    ]
    failed = [r for r in history if r.failed is not None]
    if failed:
        lines += [f"{len(failed)} round(s) failed and kept the previous global model:", ""]
        lines += [f"- round {r.round}: {r.failed}" for r in failed] + [""]
    if last is not None and test is not None:
        lines += [
            f"## Global model after round {last.round}, on the coordinator's test set",
            "",
            *([f"Note: {evaluation_note}.", ""] if evaluation_note else []),
            "| accuracy | macro AUC | loss | test images |",
            "|---|---|---|---|",
            f"| {_fmt(test.accuracy)} | {_fmt(test.auc)} | {_fmt(test.loss)} | {test.test_examples} |",
            "",
            "| class | test accuracy | hospitals whose training data has it |",
            "|---|---|---|",
        ]
        for c, name in enumerate(names):
            having = [h for h, classes in sorted(hospital_classes.items()) if c in classes]
            lines.append(f"| {name} | {_fmt(test.per_class_accuracy.get(name))} | {', '.join(having) or '-'} |")
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
        subset = test.class_subset_accuracy(classes) if test is not None and classes else None
        taken = sum(name in r.clients for r in history)
        own = [r.client_metrics[name].get("global_val_accuracy") for r in history if name in r.client_metrics]
        shown = ", ".join(names[c] for c in classes) if classes else "not reported"
        lines.append(f"| {name} | {shown} | {_fmt(subset)} | {taken} | {_fmt(own[-1] if own else None)} |")
    lines.append("")
    return "\n".join(lines)
