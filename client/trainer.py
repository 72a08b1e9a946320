"""A hospital's work for one round: load the global model, train on local data, measure, return."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from medfed.common.data import HospitalData
from medfed.common.models import build_model
from medfed.common.training import evaluate, train_local
from medfed.common.wire import ModelSpec, TrainSettings

log = logging.getLogger("medfed.client")


class TaskError(ValueError):
    """A task this hospital cannot carry out (a model that does not fit its data)."""


@dataclass(frozen=True)
class LocalResult:
    state: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float]


class Trainer:
    def __init__(self, data: HospitalData, device: torch.device, *, name: str, progress: bool = True) -> None:
        self._data = data
        self._seed_offset = zlib.crc32(name.encode())  # hospitals draw different, reproducible random streams
        self._device = device
        self._progress = progress
        self._model: nn.Module | None = None
        self._spec: ModelSpec | None = None

    def _model_for(self, spec: ModelSpec) -> nn.Module:
        info = self._data.info
        if (spec.in_channels, spec.num_classes) != (info.channels, info.num_classes):
            raise TaskError(
                f"the coordinator's model takes {spec.in_channels} channel(s) and {spec.num_classes} classes; "
                f"this hospital's data has {info.channels} and {info.num_classes}"
            )
        if self._model is None or self._spec != spec:
            self._model = build_model(spec.name, spec.in_channels, spec.num_classes)
            self._spec = spec
        return self._model

    def run(
        self, round_number: int, settings: TrainSettings, spec: ModelSpec, state: Mapping[str, torch.Tensor]
    ) -> LocalResult:
        train = self._data.split("train")
        if settings.local_epochs == 0:
            return LocalResult(dict(state), len(train), {})
        model = self._model_for(spec)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise TaskError(f"the received model does not fit {spec.name}: {str(exc).splitlines()[0]}") from None
        started = time.monotonic()
        result = train_local(
            model,
            train,
            epochs=settings.local_epochs,
            lr=settings.lr,
            batch_size=settings.batch_size,
            device=self._device,
            seed=(settings.seed + self._seed_offset) % 2**63,
            progress=self._progress,
            desc=f"round {round_number}",
        )
        metrics = {
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "train_seconds": time.monotonic() - started,
        }
        val = self._data.split("val")
        if len(val):
            evaluation = evaluate(model, val, self._data.info.num_classes, self._device)
            metrics.update(val_loss=evaluation.loss, val_accuracy=evaluation.accuracy)
        out = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
        return LocalResult(out, len(train), metrics)
