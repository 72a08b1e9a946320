"""Plain values to and from the protocol's messages, as pairs: the tensor table of a model, the data
description, training settings, privacy reports, model specs and metrics. Everything a peer sends is
checked here against common/limits.py before it becomes a plain value.

Only protobuf here, never grpc: the coordinator and the hospital's loop use the plain values without a
network, and the servicer and the client's connection call these pairs at the edge.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping

import numpy as np
from pydantic import ValidationError

from medfed.common.data.folders import DatasetInfo
from medfed.common.dp.mechanisms import DpSettings, HospitalMechanism
from medfed.common.errors import WireFormatError, WireTooLarge
from medfed.common.limits import MAX_CLASSES, MAX_METRICS, MAX_NDIM, MAX_TENSORS, MAX_TEXT, Encoding
from medfed.common.messages import ModelSpec, PrivacyReport, TrainSettings
from medfed.common.peer_text import quoted
from medfed.common.tensors import DTYPES, Layout, TensorSpec
from medfed.common.wire.proto import pb
from medfed.common.wire.secure import parameters_from_proto, parameters_to_proto


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
        proximal_mu=settings.proximal_mu,
        scaffold=settings.scaffold,
        local_normalization=settings.local_normalization,
    )
    if settings.local_dp is not None:
        msg.local_dp.clip = settings.local_dp.clip
        msg.local_dp.noise_multiplier = settings.local_dp.noise_multiplier
    if settings.secure_aggregation is not None:
        msg.secure_aggregation.CopyFrom(parameters_to_proto(settings.secure_aggregation))
    return msg


def settings_from_proto(msg: pb.TrainConfig) -> TrainSettings:
    if msg.local_epochs < 0 or msg.batch_size < 1 or not msg.learning_rate > 0:
        raise WireFormatError("invalid training configuration in the task")
    if not (math.isfinite(msg.proximal_mu) and msg.proximal_mu >= 0):
        raise WireFormatError(f"invalid FedProx μ {msg.proximal_mu} in the task")
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
        msg.proximal_mu,
        msg.scaffold,
        msg.local_normalization,
        parameters_from_proto(msg.secure_aggregation) if msg.HasField("secure_aggregation") else None,
    )


def report_to_proto(report: PrivacyReport) -> pb.PrivacyReport:
    return pb.PrivacyReport(**dataclasses.asdict(report))


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
    mechanism: HospitalMechanism = "local" if msg.mechanism == "local" else "dp_sgd"
    return PrivacyReport(
        mechanism, msg.clip, msg.noise_multiplier, msg.sampling_rate, msg.steps, msg.releases, msg.epsilon, msg.delta
    )


def model_spec_to_proto(spec: ModelSpec) -> pb.ModelSpec:
    return pb.ModelSpec(name=spec.name, in_channels=spec.in_channels, num_classes=spec.num_classes)


def model_spec_from_proto(msg: pb.ModelSpec) -> ModelSpec:
    return ModelSpec(msg.name, msg.in_channels, msg.num_classes)


_DTYPE_TO_WIRE: dict[np.dtype, pb.DType.ValueType] = dict(
    zip(DTYPES, (pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16, pb.DTYPE_BFLOAT16, pb.DTYPE_FLOAT64, pb.DTYPE_INT64,
                 pb.DTYPE_INT32, pb.DTYPE_INT16, pb.DTYPE_INT8, pb.DTYPE_UINT8, pb.DTYPE_BOOL), strict=True)
)  # fmt: skip
_DTYPE_FROM_WIRE: dict[pb.DType.ValueType, np.dtype] = {v: k for k, v in _DTYPE_TO_WIRE.items()}


def layout_to_proto(layout: Layout) -> pb.ModelHeader:
    return pb.ModelHeader(
        tensors=[
            pb.TensorSpec(
                name=t.name,
                dtype=_DTYPE_TO_WIRE[t.dtype],
                shape=t.shape,
                offset=t.offset,
                nbytes=t.nbytes,
                delta_scale=t.delta_scale,
            )
            for t in layout.tensors
        ],
        total_bytes=layout.total_bytes,
    )


def layout_from_proto(header: pb.ModelHeader, *, max_total_bytes: int) -> Layout:
    """Validate a received header completely before a single byte of the model is accepted."""
    total = header.total_bytes
    if total < 0:
        raise WireFormatError(f"negative model size {total}")
    if total > max_total_bytes:
        raise WireTooLarge(f"model of {total} bytes exceeds the allowed {max_total_bytes}")
    if len(header.tensors) > MAX_TENSORS:
        raise WireTooLarge(f"{len(header.tensors)} tensors exceed the limit of {MAX_TENSORS}")
    specs: list[TensorSpec] = []
    names: set[str] = set()
    for t in header.tensors:
        if not t.name or t.name in names:
            raise WireFormatError(f"tensor name {quoted(t.name)} is empty or repeated")
        names.add(t.name)
        dtype = _DTYPE_FROM_WIRE.get(t.dtype)
        if dtype is None:
            raise WireFormatError(f"tensor {quoted(t.name)} has unknown dtype code {t.dtype}")
        shape = tuple(int(d) for d in t.shape)
        if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
            raise WireFormatError(f"tensor {quoted(t.name)} has invalid shape {shape[: MAX_NDIM + 1]}")
        itemsize = dtype.itemsize
        if t.nbytes != math.prod(shape) * itemsize:
            raise WireFormatError(f"tensor {quoted(t.name)}: {t.nbytes} bytes do not match shape {shape} of {dtype}")
        if t.offset < 0 or t.offset % itemsize or t.offset + t.nbytes > total:
            raise WireFormatError(f"tensor {quoted(t.name)} has an invalid offset {t.offset}")
        scale = t.delta_scale
        if not (math.isfinite(scale) and scale >= 0) or (scale > 0 and dtype != np.int8):
            raise WireFormatError(f"tensor {quoted(t.name)} has an invalid delta scale {scale} for {dtype}")
        specs.append(TensorSpec(t.name, dtype, shape, t.offset, t.nbytes, scale))
    ordered = sorted((s for s in specs if s.nbytes), key=lambda s: s.offset)
    for before, after in itertools.pairwise(ordered):
        if before.offset + before.nbytes > after.offset:
            raise WireFormatError(f"tensors {quoted(before.name)} and {quoted(after.name)} overlap")
    return Layout(tuple(specs), total)


def layout_to_bytes(layout: Layout) -> bytes:
    """A tensor table as bytes (for the model helper's pipe), read back by ``layout_from_bytes``."""
    return layout_to_proto(layout).SerializeToString()


def layout_from_bytes(data: bytes, *, max_total_bytes: int) -> Layout:
    return layout_from_proto(pb.ModelHeader.FromString(data), max_total_bytes=max_total_bytes)
