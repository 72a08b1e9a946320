"""The live status as typed records: what ``GET /api/status`` returns and the dashboard page reads.

The JSON layout is documented in the README (operator guide: the status endpoint); ``to_json`` is the
only place that writes it. Nothing in it is patient-level: per-hospital figures are what hospitals
reported about their own training (none at all from a hospital under differential privacy), and the
test-set figures are the coordinator's own evaluation of the global model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Phase = Literal[
    "starting", "waiting for hospitals", "sending", "training", "receiving", "evaluating", "finished", "stopped"
]
"""where the federation is: a round moves through sending, training and receiving as its hospitals do"""
PHASES: tuple[Phase, ...] = get_args(Phase)
HospitalState = Literal["joined", "downloading", "training", "uploading", "reported", "silent", "left", "refused"]
"""one hospital, as the coordinator last saw it"""
HOSPITAL_STATES: tuple[HospitalState, ...] = get_args(HospitalState)
STATUS_FORMAT = "medfed-status/1"


@dataclass
class HospitalView:
    name: str
    state: HospitalState = "joined"
    certificate_expires: str | None = None
    """ISO 8601 (UTC) under TLS; None on an --insecure coordinator"""
    num_examples: int = 0
    joined_at: float = 0.0
    last_seen: float = 0.0
    """wall-clock seconds (time.time()) of its last call"""
    rounds: int = 0
    """rounds whose update was accepted"""
    bytes_down: int = 0
    bytes_up: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    """its last reported training metrics (empty under differential privacy)"""
    epsilon: float | None = None
    """its self-reported ε under differential privacy"""
    dp: bool = False
    detail: str = ""
    """the reason it left or was refused"""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": self.state, "certificate_expires": self.certificate_expires,
            "num_examples": self.num_examples, "joined_at": self.joined_at, "last_seen": self.last_seen,
            "rounds": self.rounds, "bytes_down": self.bytes_down, "bytes_up": self.bytes_up,
            "metrics": dict(self.metrics), "epsilon": self.epsilon, "dp": self.dp, "detail": self.detail,
        }  # fmt: skip


@dataclass(frozen=True)
class RoundPoint:
    """One completed round, for the curves."""

    round: int
    duration_s: float
    accuracy: float | None
    auc: float | None
    loss: float | None
    epsilon: float | None
    """central DP's ε after this round, else the largest ε a hospital reported"""
    hospital_val_accuracy: dict[str, float]
    failed: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round, "duration_s": self.duration_s, "accuracy": self.accuracy, "auc": self.auc,
            "loss": self.loss, "epsilon": self.epsilon, "hospital_val_accuracy": dict(self.hospital_val_accuracy),
            "failed": self.failed,
        }  # fmt: skip


@dataclass
class Event:
    time: float
    kind: str
    """join, leave, refused, silent, back, timeout, round, checkpoint, admin, finished"""
    text: str
    count: int = 1
    """the same refusal repeated: counted on one event instead of filling the log"""

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "text": self.text, "count": self.count}


@dataclass(frozen=True)
class Status:
    federation_id: str
    strategy: str
    round: int
    """the round open now, else the last one completed"""
    total_rounds: int
    rounds_completed: int
    phase: Phase
    phase_since: float
    deadline: float | None
    """wall-clock time the open round (or the wait for hospitals) gives up"""
    now: float
    hospitals: list[HospitalView]
    rounds: list[RoundPoint]
    confusion_matrix: list[list[int]] | None
    class_names: list[str]
    events: list[Event]
    privacy: str
    """what kind of differential privacy the run has: none, central, local, or hospitals' own"""
    bytes_down: int
    bytes_up: int
    refusals: dict[str, int]
    """status code name -> refusals so far"""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATUS_FORMAT, "federation_id": self.federation_id, "strategy": self.strategy,
            "round": self.round, "total_rounds": self.total_rounds, "rounds_completed": self.rounds_completed,
            "phase": self.phase, "phase_since": self.phase_since, "deadline": self.deadline, "now": self.now,
            "hospitals": [h.to_json() for h in self.hospitals], "rounds": [r.to_json() for r in self.rounds],
            "confusion_matrix": self.confusion_matrix, "class_names": list(self.class_names),
            "events": [e.to_json() for e in self.events], "privacy": self.privacy,
            "bytes_down": self.bytes_down, "bytes_up": self.bytes_up, "refusals": dict(self.refusals),
        }  # fmt: skip
