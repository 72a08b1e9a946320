"""The plain values that travel between coordinator and hospitals (and into history.jsonl and model.json):
frozen data classes, with no protobuf in them; common/wire/convert.py and stream.py turn them into
messages and back."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medfed.common.dp.mechanisms import DpSettings, HospitalMechanism
from medfed.common.limits import Encoding
from medfed.common.secagg.messages import Parameters
from medfed.common.tensors import Layout, StateDict


@dataclass(frozen=True)
class TrainSettings:
    local_epochs: int
    lr: float
    batch_size: int
    seed: int
    optimizer: str = "adam"
    local_dp: DpSettings | None = None
    """the coordinator's request for local differential privacy"""
    augment: bool = False
    update_encoding: Encoding = "lossless"
    """how the hospital may compress its update (common/compression.py)"""
    proximal_mu: float = 0.0
    """FedProx's μ: the local loss gets μ/2·‖w − w_global‖² (0: plain training)"""
    scaffold: bool = False
    """SCAFFOLD: the task carries the server's control variate; the update returns the hospital's change"""
    local_normalization: bool = False
    """FedBN: the hospital keeps its own normalisation layers from round to round"""
    secure_aggregation: Parameters | None = None
    """SecAgg+: the round sums masked updates; the hospital takes part in the stages (common/secagg/)"""


@dataclass(frozen=True)
class PrivacyReport:
    mechanism: HospitalMechanism
    clip: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    releases: int
    epsilon: float
    delta: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    in_channels: int
    num_classes: int


def report_to_json(report: PrivacyReport) -> dict[str, Any]:
    """For history.jsonl and model.json (JSON has no infinity: ε without noise is null)."""
    out = asdict(report)
    out["epsilon"] = report.epsilon if math.isfinite(report.epsilon) else None
    return out


def report_from_json(data: Mapping[str, Any]) -> PrivacyReport:
    """The inverse of ``report_to_json`` (for the coordinator's own checkpoint, not for network input)."""
    fields = dict(data)
    fields["epsilon"] = math.inf if fields.get("epsilon") is None else float(fields["epsilon"])
    return PrivacyReport(**fields)


@dataclass(frozen=True)
class TaskHeader:
    round: int
    total_rounds: int
    settings: TrainSettings
    model: ModelSpec


@dataclass(frozen=True)
class ReceivedTask:
    header: TaskHeader
    state: StateDict


@dataclass(frozen=True)
class FinishedNotice:
    """The federation is over, or (``resumable``) the coordinator stops and a resumed one may follow."""

    reason: str
    rounds_completed: int
    resumable: bool = False


@dataclass(frozen=True)
class UpdateHeader:
    session_id: str
    round: int
    num_examples: int
    metrics: dict[str, float]
    layout: Layout
    privacy: PrivacyReport | None = None
    delta: bool = False
    """the float tensors are int8 differences from the round's global model (common/compression.py)"""
    signature: bytes = b""
    """the hospital's signature over the update's digest (common/provenance/): required under TLS"""
