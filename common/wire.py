"""Plain Python values to and from the protocol's small messages, as pairs (tensors live in serde).

Only protobuf here, never grpc: the coordinator and the hospital's loop use these types without a
network, and the servicer and the node's transport call these pairs at the edge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import ValidationError

from medfed.common.compression import Encoding
from medfed.common.data.folders import DatasetInfo
from medfed.common.peer_text import quoted
from medfed.common.privacy import DpSettings
from medfed.common.serde import WireFormatError, WireTooLarge
from medfed.proto.v1 import federation_pb2 as pb

MAX_TEXT = 128
"""Longest dataset name, task, class name or version string accepted from the other side."""
MAX_CLASSES = 1000
MAX_METRICS = 64


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


@dataclass(frozen=True)
class PrivacyReport:
    mechanism: Literal["local", "dp_sgd"]
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


def info_to_proto(info: DatasetInfo) -> pb.DatasetInfo:
    return pb.DatasetInfo(
        dataset=info.dataset,
        task=info.task,
        channels=info.channels,
        class_names=list(info.class_names),
        image_size=list(info.image_size),
    )


def check_text(what: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise WireTooLarge(f"{what} is {len(value)} characters long; the limit is {MAX_TEXT}")
    return value


def metrics_from_proto(metrics: Mapping[str, float]) -> dict[str, float]:
    """A hospital's reported metrics: at most MAX_METRICS names of at most MAX_TEXT characters, finite values."""
    if len(metrics) > MAX_METRICS:
        raise WireTooLarge(f"{len(metrics)} metrics exceed the limit of {MAX_METRICS}")
    for name, value in metrics.items():
        check_text("a metric name", name)
        if not math.isfinite(value):
            raise WireFormatError(f"metric {quoted(name)} is not a finite number")
    return dict(metrics)


def info_from_proto(msg: pb.DatasetInfo) -> DatasetInfo:
    if len(msg.class_names) > MAX_CLASSES:
        raise WireTooLarge(f"{len(msg.class_names)} classes exceed the limit of {MAX_CLASSES}")
    for text in (msg.dataset, msg.task, *msg.class_names):
        check_text("a dataset description field", text)
    try:
        return DatasetInfo(
            dataset=msg.dataset,
            task=msg.task,
            channels=msg.channels,
            class_names=tuple(msg.class_names),
            image_size=tuple(msg.image_size),
        )
    except ValidationError as exc:
        raise WireFormatError(f"invalid dataset description: {exc.errors()[0]['msg']}") from None


_ENCODING_TO_WIRE: dict[Encoding, pb.UpdateEncoding.ValueType] = {
    "lossless": pb.UPDATE_ENCODING_LOSSLESS,
    "fp16": pb.UPDATE_ENCODING_FP16,
    "bf16": pb.UPDATE_ENCODING_BF16,
    "int8": pb.UPDATE_ENCODING_INT8_DELTA,
}
_ENCODING_FROM_WIRE = {v: k for k, v in _ENCODING_TO_WIRE.items()}


def settings_to_proto(settings: TrainSettings) -> pb.TrainConfig:
    msg = pb.TrainConfig(
        local_epochs=settings.local_epochs,
        learning_rate=settings.lr,
        batch_size=settings.batch_size,
        optimizer=settings.optimizer,
        seed=settings.seed,
        augment=settings.augment,
        update_encoding=_ENCODING_TO_WIRE[settings.update_encoding],
    )
    if settings.local_dp is not None:
        msg.local_dp.clip = settings.local_dp.clip
        msg.local_dp.noise_multiplier = settings.local_dp.noise_multiplier
    return msg


def settings_from_proto(msg: pb.TrainConfig) -> TrainSettings:
    if msg.local_epochs < 0 or msg.batch_size < 1 or not msg.learning_rate > 0:
        raise WireFormatError("invalid training configuration in the task")
    local_dp = None
    if msg.HasField("local_dp"):
        try:
            local_dp = DpSettings("local", msg.local_dp.clip, msg.local_dp.noise_multiplier)
        except ValueError as exc:
            raise WireFormatError(f"invalid local DP request in the task: {exc}") from None
    encoding = _ENCODING_FROM_WIRE.get(msg.update_encoding)
    if encoding is None:
        raise WireFormatError(f"unknown update encoding {msg.update_encoding} in the task")
    return TrainSettings(
        msg.local_epochs,
        msg.learning_rate,
        msg.batch_size,
        msg.seed,
        msg.optimizer or "adam",
        local_dp,
        msg.augment,
        encoding,
    )


def report_to_proto(report: PrivacyReport) -> pb.PrivacyReport:
    return pb.PrivacyReport(**asdict(report))


def report_from_proto(msg: pb.PrivacyReport) -> PrivacyReport:
    """A hospital's self-reported privacy: a known mechanism, values in range (ε may be +inf: no noise)."""
    if msg.mechanism not in ("local", "dp_sgd"):
        raise WireFormatError(f"unknown privacy mechanism {quoted(check_text('a mechanism', msg.mechanism))}")
    finite = (msg.clip, msg.noise_multiplier, msg.sampling_rate, msg.delta)
    if not all(math.isfinite(v) for v in finite) or math.isnan(msg.epsilon):
        raise WireFormatError("the privacy report holds a value that is not a number")
    if not (msg.clip > 0 and msg.noise_multiplier >= 0 and 0 < msg.sampling_rate <= 1 and 0 < msg.delta < 1):
        raise WireFormatError("the privacy report holds an out-of-range clip, noise multiplier, rate or delta")
    if msg.steps < 1 or msg.releases < 1 or msg.epsilon < 0:
        raise WireFormatError("the privacy report holds a negative or zero count or a negative epsilon")
    mechanism: Literal["local", "dp_sgd"] = "local" if msg.mechanism == "local" else "dp_sgd"
    return PrivacyReport(
        mechanism, msg.clip, msg.noise_multiplier, msg.sampling_rate, msg.steps, msg.releases, msg.epsilon, msg.delta
    )


def report_to_json(report: PrivacyReport) -> dict[str, Any]:
    """For history.jsonl and model.json (JSON has no infinity: ε without noise is null)."""
    out = asdict(report)
    out["epsilon"] = report.epsilon if math.isfinite(report.epsilon) else None
    return out


def model_spec_to_proto(spec: ModelSpec) -> pb.ModelSpec:
    return pb.ModelSpec(name=spec.name, in_channels=spec.in_channels, num_classes=spec.num_classes)


def model_spec_from_proto(msg: pb.ModelSpec) -> ModelSpec:
    return ModelSpec(msg.name, msg.in_channels, msg.num_classes)


def report_from_json(data: Mapping[str, Any]) -> PrivacyReport:
    """The inverse of ``report_to_json`` (for the coordinator's own checkpoint, not for network input)."""
    fields = dict(data)
    fields["epsilon"] = math.inf if fields.get("epsilon") is None else float(fields["epsilon"])
    return PrivacyReport(**fields)
