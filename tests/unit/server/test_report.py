from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medfed.common.data.folders import DatasetInfo
from medfed.common.ml.training import macro_auc
from medfed.server.history import RoundRecord, TestResult
from medfed.server.report import write_report
from medfed.server.run_dir import REPORT_FILES

INFO = DatasetInfo(dataset="toy", channels=1, class_names=("normal", "cnv", "drusen"), image_size=(8, 8))


def record(round_number: int, confusion: list[list[int]]) -> RoundRecord:
    total = sum(map(sum, confusion))
    return RoundRecord.from_json(
        {
            "round": round_number,
            "clients": ["hospital_a", "hospital_b"],
            "accuracy": sum(confusion[c][c] for c in range(3)) / total,
            "auc": 0.9,
            "loss": 1.0 / round_number,
            "test_examples": total,
            "per_class_accuracy": {n: confusion[c][c] / sum(confusion[c]) for c, n in enumerate(INFO.class_names)},
            "confusion_matrix": confusion,
            "client_metrics": {"hospital_a": {"global_val_accuracy": 0.5}, "hospital_b": {}},
        }
    )


def class_subset_accuracy(confusion: list[list[int]], classes: list[int]) -> float | None:
    tested = TestResult(loss=0.0, accuracy=0.0, auc=None, per_class_accuracy={}, test_examples=0,
                        confusion_matrix=confusion)  # fmt: skip
    return tested.class_subset_accuracy(classes)


def test_class_subset_accuracy_counts_only_the_rows_of_those_classes() -> None:
    confusion = [[8, 2, 0], [1, 3, 6], [0, 0, 10]]

    assert class_subset_accuracy(confusion, [0, 2]) == pytest.approx(18 / 20)
    assert class_subset_accuracy(confusion, [1]) == pytest.approx(3 / 10)
    assert class_subset_accuracy([[0, 0], [0, 0]], [0]) is None


def test_macro_auc_matches_scikit_learn_for_two_and_many_classes() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    probabilities = rng.dirichlet(np.ones(4), 200)
    probabilities[np.arange(200), labels] += 0.3
    probabilities /= probabilities.sum(1, keepdims=True)
    binary = probabilities[:, :2] / probabilities[:, :2].sum(1, keepdims=True)
    binary_labels = labels % 2

    assert macro_auc(labels, probabilities) == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))
    assert macro_auc(binary_labels, binary) == pytest.approx(roc_auc_score(binary_labels, binary[:, 1]))
    assert macro_auc(np.zeros(5, dtype=int), probabilities[:5]) is None  # one class: AUC is undefined


def test_the_report_names_each_hospitals_classes_and_writes_every_file(tmp_path: Path) -> None:
    history = [record(1, [[5, 5, 0], [5, 5, 0], [0, 0, 10]]), record(2, [[8, 2, 0], [1, 3, 6], [0, 0, 10]])]

    written = write_report(tmp_path, history, INFO, {"hospital_a": (0, 2), "hospital_b": (1,)}, title="toy run")

    assert sorted(p.name for p in written) == sorted(REPORT_FILES)
    report = (tmp_path / "report.md").read_text()
    assert "| hospital_a | normal, drusen | 0.9000 | 2 | 0.5000 |" in report
    assert "| hospital_b | cnv | 0.3000 | 2 | - |" in report
    assert "| drusen | 1.0000 | hospital_a |" in report
    assert (tmp_path / "confusion_matrix.csv").read_text().splitlines()[2] == "cnv,1,3,6"


def test_without_a_test_set_the_report_still_shows_the_hospitals(tmp_path: Path) -> None:
    metrics = {"hospital_a": {"global_val_accuracy": 0.4}}
    history = [RoundRecord.from_json({"round": 1, "clients": ["hospital_a"], "client_metrics": metrics})]

    written = write_report(tmp_path, history, INFO, {}, title="untested")

    assert [p.name for p in written] == ["report.md", "accuracy_loss.png"]
    assert "not tested centrally" in (tmp_path / "report.md").read_text()
