"""A hospital's work for one round: load the global model, train on local data, measure, return."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medfed.client.attack import Attack, flip_labels, poison_update
from medfed.client.local_state import STATE_FOLDER, LocalState, LocalStateError, fitting
from medfed.client.privacy import RoundPrivacy
from medfed.client.scaffold import HospitalControl, split_control
from medfed.common.data.folders import HospitalData
from medfed.common.dp.mechanisms import privatize_update, secure_generator
from medfed.common.errors import MedfedError, UnusableModel
from medfed.common.limits import LOCAL_OPTIMIZERS
from medfed.common.messages import ModelSpec, PrivacyReport, TrainSettings
from medfed.common.ml.dp_sgd import DpSgdPlan, train_dp_sgd, wrap_problem
from medfed.common.ml.models import build_model, dp_model_problem
from medfed.common.ml.torch_state import normalization_names, to_numpy, to_torch
from medfed.common.ml.training import evaluate, train_local
from medfed.common.peer_text import quoted
from medfed.common.tensors import StateDict

log = logging.getLogger("medfed.client")

NORMALIZATION_KIND = "normalization"


class TaskError(MedfedError, ValueError):
    """A task this hospital cannot carry out (a model that does not fit its data)."""


@dataclass(frozen=True)
class LocalResult:
    state: StateDict
    num_examples: int
    metrics: dict[str, float]
    """sent to the coordinator (empty under differential privacy: they are computed from the data)"""
    local_metrics: dict[str, float] = field(default_factory=dict)
    """for this hospital's log only"""
    privacy: PrivacyReport | None = None


class Trainer:
    def __init__(
        self,
        data: HospitalData,
        device: torch.device,
        *,
        name: str,
        progress: bool = True,
        attack: Attack | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``state_dir``: where SCAFFOLD's and FedBN's kept tensors go (default DATA/medfed-state)."""
        self._data = data
        self._attack = attack
        self._train = data.split("train")
        if attack is not None and attack.kind == "label-flip":
            self._train = flip_labels(self._train, data.info.num_classes)
        self._seed_offset = zlib.crc32(name.encode())  # hospitals draw different, reproducible random streams
        self._device = device
        self._progress = progress
        self._model: nn.Module | None = None
        self._spec: ModelSpec | None = None
        self._kept = LocalState(state_dir or data.path / STATE_FOLDER)

    def _model_for(self, spec: ModelSpec, privacy: RoundPrivacy | None) -> nn.Module:
        info = self._data.info
        if (spec.in_channels, spec.num_classes) != (info.channels, info.num_classes):
            raise TaskError(
                f"the coordinator's model takes {spec.in_channels} channel(s) and {spec.num_classes} classes; "
                f"this hospital's data has {info.channels} and {info.num_classes}"
            )
        if self._model is None or self._spec != spec:
            self._model = build_model(spec.name, spec.in_channels, spec.num_classes)
            self._spec = spec
        if privacy is not None:
            mechanism = privacy.settings.mechanism
            problem = dp_model_problem(self._model)
            if problem is None and mechanism == "dp_sgd":
                problem = wrap_problem(self._model)
            if problem is not None:
                what = "--dp-sgd" if mechanism == "dp_sgd" else "local differential privacy"
                raise TaskError(f"{what} cannot train the coordinator's model {spec.name}: {problem}")
        return self._model

    def run(
        self,
        round_number: int,
        settings: TrainSettings,
        spec: ModelSpec,
        state: Mapping[str, np.ndarray],
        privacy: RoundPrivacy | None = None,
        *,
        federation: str = "",
    ) -> LocalResult:
        """``state``: the task's tensors (the global model, and SCAFFOLD's control variate when asked);
        ``federation``: the id the coordinator gave at join, which names what this hospital keeps."""
        self._check(settings, privacy)
        model_state, server_control = split_control(state) if settings.scaffold else (dict(state), {})
        try:
            control = HospitalControl(self._kept, federation) if settings.scaffold else None
            own = control.before(round_number, server_control) if control is not None else {}
            result, steps = self._run(round_number, settings, spec, model_state, privacy, own, server_control,
                                      federation)  # fmt: skip
            changes = {} if control is None else control.after(
                round_number, own=own, server=server_control, start=model_state, trained=result.state, steps=steps,
                lr=settings.lr,
            )  # fmt: skip
        except LocalStateError as exc:
            raise TaskError(str(exc)) from None
        if self._attack is not None:
            log.warning("SIMULATED ATTACK (--simulate-attack, research only): round %d: %s", round_number,
                        self._attack.describe())  # fmt: skip
            result = replace(result, state=poison_update(self._attack, result.state, model_state))
        return replace(result, state={**result.state, **changes}) if changes else result

    def _check(self, settings: TrainSettings, privacy: RoundPrivacy | None) -> None:
        """Refuse a task this hospital cannot honour, before any work."""
        if settings.optimizer not in LOCAL_OPTIMIZERS:
            raise TaskError(f"the coordinator asks for the optimizer {quoted(settings.optimizer)}, which this "
                            f"hospital does not have ({' or '.join(LOCAL_OPTIMIZERS)})")  # fmt: skip
        if settings.proximal_mu > 0 and privacy is not None and privacy.settings.mechanism == "dp_sgd":
            raise TaskError(
                "the coordinator asks for FedProx's proximal term (--strategy fedprox), which this hospital's "
                "DP-SGD cannot add: its per-patient clipping bounds the data's gradients, not the term's"
            )
        if settings.scaffold and privacy is not None:
            raise TaskError(
                "the coordinator asks for SCAFFOLD's control variates (--strategy scaffold), which this hospital's "
                "differential privacy does not cover: they are computed from its data outside the noised update"
            )
        if settings.scaffold and settings.update_encoding == "int8":
            raise TaskError("the coordinator asks for SCAFFOLD with int8 delta updates, which cannot carry "
                            "the control variate's change")  # fmt: skip

    def _run(
        self,
        round_number: int,
        settings: TrainSettings,
        spec: ModelSpec,
        state: Mapping[str, np.ndarray],
        privacy: RoundPrivacy | None,
        own_control: Mapping[str, np.ndarray],
        server_control: Mapping[str, np.ndarray],
        federation: str,
    ) -> tuple[LocalResult, int]:
        """The round's training; returns the result and the number of optimizer steps taken."""
        train = self._train
        if settings.local_epochs == 0:
            return LocalResult(dict(state), len(train), {}), 0
        model = self._model_for(spec, privacy)
        try:
            model.load_state_dict(to_torch(state), strict=True)
        except RuntimeError as exc:
            raise TaskError(f"the received model does not fit {spec.name}: {str(exc).splitlines()[0]}") from None
        if settings.local_normalization:
            self._own_normalization(model, federation)
        correction = scaffold_correction(model, own_control, server_control) if settings.scaffold else None
        val = self._data.split("val")
        metrics: dict[str, float] = {}
        if len(val):  # federated evaluation: the global model on this hospital's own validation images
            try:
                received = evaluate(model, val, self._data.info.num_classes, self._device)
            except UnusableModel as exc:
                raise TaskError(f"round {round_number}: the coordinator's global model is unusable: {exc}") from None
            metrics.update(global_val_loss=received.loss, global_val_accuracy=received.accuracy)
            if received.auc is not None:
                metrics["global_val_auc"] = received.auc
        started = time.monotonic()
        desc = f"round {round_number}"
        if privacy is not None and privacy.settings.mechanism == "dp_sgd":
            result = train_dp_sgd(
                model,
                train,
                plan=DpSgdPlan(privacy.spend.sampling_rate, privacy.spend.steps),
                lr=settings.lr,
                clip=privacy.settings.clip,
                noise_multiplier=privacy.settings.noise_multiplier,
                device=self._device,
                progress=self._progress,
                desc=desc,
            )
        else:
            result = train_local(
                model,
                train,
                epochs=settings.local_epochs,
                lr=settings.lr,
                batch_size=settings.batch_size,
                device=self._device,
                seed=(settings.seed + self._seed_offset) % 2**63,
                progress=self._progress,
                desc=desc,
                augment=settings.augment,
                proximal_mu=settings.proximal_mu,
                optimizer="sgd" if settings.optimizer == "sgd" else "adam",
                correction=correction,
            )
        metrics.update(train_loss=result.loss, train_accuracy=result.accuracy, train_seconds=time.monotonic() - started)
        if len(val):
            evaluation = evaluate(model, val, self._data.info.num_classes, self._device)
            metrics.update(val_loss=evaluation.loss, val_accuracy=evaluation.accuracy)
        out = to_numpy(model.state_dict())
        if settings.local_normalization:
            own = {name: out[name] for name in normalization_names(model)}
            self._kept.save(federation, NORMALIZATION_KIND, round_number, own)
        steps = result.steps
        if privacy is None:
            return LocalResult(out, len(train), metrics, metrics), steps
        if privacy.settings.mechanism == "local":
            out, norm = privatize_update(out, state, privacy.settings, secure_generator())
            metrics["update_norm"] = norm
        return LocalResult(out, len(train), {}, metrics), steps

    def _own_normalization(self, model: nn.Module, federation: str) -> None:
        """FedBN: this hospital's normalisation layers from its last round, over the global model's."""
        kept = self._kept.load(federation, NORMALIZATION_KIND)
        if kept is None:
            return  # its first round: the global model's layers are where it starts
        current = to_numpy(model.state_dict())
        expected = {name: current[name] for name in normalization_names(model)}
        own = fitting(kept.tensors, expected, "normalisation layers", self._kept.path(federation, NORMALIZATION_KIND))
        model.load_state_dict(to_torch(own), strict=False)


def scaffold_correction(
    model: nn.Module, own: Mapping[str, np.ndarray], server: Mapping[str, np.ndarray]
) -> list[torch.Tensor]:
    """c − c_i for each of the model's parameters, in their order."""
    names = [name for name, _ in model.named_parameters()]
    if set(names) != server.keys():
        raise TaskError(
            f"the coordinator's SCAFFOLD control variate has {len(server)} tensors that do not match the model's "
            f"{len(names)} parameters"
        )
    return [torch.from_numpy(np.asarray(server[n], dtype=np.float32) - np.asarray(own[n], dtype=np.float32))
            for n in names]  # fmt: skip
