"""A round's record, as typed data: what the driver writes to history.jsonl (one JSON object per line)
and what the report, fed-demo, fed-study and the benchmarks read back, so no one reads it by key.

The JSON keeps the flat layout history.jsonl has always had: the test-set figures sit beside the
round's other fields, and optional parts appear only when they exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TestResult:
    """The global model on the coordinator's test set (the model helper's evaluation)."""

    __test__ = False  # not a pytest test class, whatever its name

    loss: float
    accuracy: float
    auc: float | None
    """macro one-vs-rest"""
    per_class_accuracy: dict[str, float | None]
    test_examples: int
    confusion_matrix: list[list[int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "auc": self.auc,
            "per_class_accuracy": dict(self.per_class_accuracy),
            "test_examples": self.test_examples,
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestResult:
        return cls(
            loss=float(data["loss"]),
            accuracy=float(data["accuracy"]),
            auc=None if data.get("auc") is None else float(data["auc"]),
            per_class_accuracy=dict(data["per_class_accuracy"]),
            test_examples=int(data["test_examples"]),
            confusion_matrix=[list(row) for row in data["confusion_matrix"]],
        )

    def class_subset_accuracy(self, classes: Sequence[int]) -> float | None:
        """Accuracy on the test images whose true class is one of ``classes``."""
        total = sum(sum(self.confusion_matrix[c]) for c in classes)
        return sum(self.confusion_matrix[c][c] for c in classes) / total if total else None


@dataclass(frozen=True)
class RoundRecord:
    round: int
    clients: list[str]
    num_examples: int
    duration_s: float
    bytes_down: int
    """model bytes sent to hospitals this round"""
    bytes_up: int
    """update bytes received"""
    server_peak_rss_mb: float | None
    model_helper_peak_rss_mb: float | None
    client_metrics: dict[str, dict[str, float]]
    """what each contributing hospital reported, with its num_examples"""
    missing: list[str]
    test: TestResult | None = None
    hospital_class_accuracy: dict[str, float | None] | None = None
    """the test accuracy on each hospital's own classes"""
    failed: str | None = None
    """why the round's model was not adopted (the previous one was kept)"""
    update_encoding: str | None = None
    strategy: str | None = None
    """the aggregation strategy's name"""
    privacy: dict[str, Any] | None = None
    epsilon: float | None = None
    """the largest ε in use (with ``privacy``)"""
    extra: dict[str, Any] = field(default_factory=dict)
    """keys this version does not know (from a newer one): kept as they are"""

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "round": self.round,
            "num_clients": self.num_clients,
            "clients": list(self.clients),
            "num_examples": self.num_examples,
            "duration_s": self.duration_s,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "server_peak_rss_mb": self.server_peak_rss_mb,
            "model_helper_peak_rss_mb": self.model_helper_peak_rss_mb,
        }
        if self.failed is not None:
            out["failed"] = self.failed
        if self.test is not None:
            out.update(self.test.to_json())
        if self.hospital_class_accuracy is not None:
            out["hospital_class_accuracy"] = dict(self.hospital_class_accuracy)
        out["client_metrics"] = {name: dict(m) for name, m in self.client_metrics.items()}
        out["missing"] = list(self.missing)
        if self.update_encoding is not None:
            out["update_encoding"] = self.update_encoding
        if self.strategy is not None:
            out["strategy"] = self.strategy
        if self.privacy is not None:
            out["privacy"] = self.privacy
            out["epsilon"] = self.epsilon
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        known = {
            "round", "num_clients", "clients", "num_examples", "duration_s", "bytes_down", "bytes_up",
            "server_peak_rss_mb", "model_helper_peak_rss_mb", "failed", "hospital_class_accuracy", "client_metrics",
            "missing", "update_encoding", "strategy", "privacy", "epsilon", *TestResult.__dataclass_fields__,
        }  # fmt: skip
        return cls(
            round=int(data["round"]),
            clients=list(data.get("clients", [])),
            num_examples=int(data.get("num_examples", 0)),
            duration_s=float(data.get("duration_s", 0.0)),
            bytes_down=int(data.get("bytes_down", 0)),
            bytes_up=int(data.get("bytes_up", 0)),
            server_peak_rss_mb=data.get("server_peak_rss_mb"),
            model_helper_peak_rss_mb=data.get("model_helper_peak_rss_mb"),
            client_metrics={name: dict(m) for name, m in data.get("client_metrics", {}).items()},
            missing=list(data.get("missing", [])),
            test=TestResult.from_json(data) if "accuracy" in data else None,
            hospital_class_accuracy=data.get("hospital_class_accuracy"),
            failed=data.get("failed"),
            update_encoding=data.get("update_encoding"),
            strategy=data.get("strategy"),
            privacy=data.get("privacy"),
            epsilon=data.get("epsilon"),
            extra={k: v for k, v in data.items() if k not in known},
        )
