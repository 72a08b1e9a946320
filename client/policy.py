"""A hospital's policy file (fed-client --policy policy.toml): what this node will and will not do,
written by the hospital (its IT team, its data protection officer), whatever the coordinator asks.

Every task is checked against it before training starts; a task that breaks a rule is refused with
one line naming the rule, and the node leaves that federation (with --stay it waits for the next one).
The file is validated once at start-up: an unknown key or a bad value stops fed-client with one line.

    allowed_models = ["cnn_gn", "resnet18_gn"]   # architectures this node trains
    max_local_epochs = 5                         # epochs per round
    max_rounds = 100                             # rounds a federation may plan
    require_dp = true                            # every round under differential privacy (local DP or DP-SGD)
    max_epsilon = 8.0                            # ... and this data's total ε never above this
    require_secure_aggregation = false           # refuse rounds the coordinator could read one by one
    allowed_coordinators = ["fl.example.org"]    # names the coordinator's certificate must be checked for
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medfed.common.config import did_you_mean, load_toml
from medfed.common.errors import ConfigError
from medfed.common.limits import ModelName
from medfed.common.messages import ModelSpec, TrainSettings


class HospitalPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_models: list[ModelName] | None = Field(None, min_length=1)
    max_local_epochs: int | None = Field(None, ge=0)
    max_rounds: int | None = Field(None, ge=1)
    require_dp: bool = False
    max_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    require_secure_aggregation: bool = False
    allowed_coordinators: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = Field(None, min_length=1)

    def broken_by(
        self,
        *,
        model: ModelSpec,
        settings: TrainSettings,
        total_rounds: int,
        private: bool,
        epsilon_after: float | None,
    ) -> str | None:
        """The first rule a round breaks, as ``key = value: why``; None when it keeps them all.
        ``private``: the round would train under differential privacy (the hospital's own, or what the
        coordinator asked for); ``epsilon_after``: this data's total ε once it has."""
        if self.allowed_models is not None and model.name not in self.allowed_models:
            return f"allowed_models = {self.allowed_models}: the round trains {model.name}"
        if self.max_local_epochs is not None and settings.local_epochs > self.max_local_epochs:
            return f"max_local_epochs = {self.max_local_epochs}: the round asks for {settings.local_epochs}"
        if self.max_rounds is not None and total_rounds > self.max_rounds:
            return f"max_rounds = {self.max_rounds}: the federation plans {total_rounds} rounds"
        trains = settings.local_epochs > 0
        if (self.require_dp or self.max_epsilon is not None) and trains and not private:
            return (
                f"{'require_dp = true' if self.require_dp else f'max_epsilon = {self.max_epsilon:g}'}: the round asks "
                "for no differential privacy and this hospital has none of its own (--dp-clip, --dp-noise-multiplier)"
            )
        if self.max_epsilon is not None and epsilon_after is not None and epsilon_after > self.max_epsilon:
            return f"max_epsilon = {self.max_epsilon:g}: taking part would raise this data's ε to {epsilon_after:.3g}"
        if self.require_secure_aggregation and settings.secure_aggregation is None:
            return "require_secure_aggregation = true: the round does not use secure aggregation"
        return None

    def check_coordinator(self, name: str, *, tls: bool) -> None:
        """Start-up: the coordinator this node connects to must be one the policy allows."""
        if self.allowed_coordinators is None:
            return
        if not tls:
            raise ConfigError(
                "the policy's allowed_coordinators needs TLS: without it the coordinator is not authenticated"
            )
        if name not in self.allowed_coordinators:
            raise ConfigError(
                f"the policy's allowed_coordinators = {self.allowed_coordinators} does not include {name!r}, the "
                "coordinator --server (or --server-name) names"
            )


def load_policy(path: Path) -> HospitalPolicy:
    values: dict[str, Any] = load_toml(path)
    try:
        return HospitalPolicy.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]) or "the file"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {key!r}{did_you_mean(key, HospitalPolicy.model_fields)}")
            else:
                got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
                problems.append(f"{key}: {str(error['msg']).removeprefix('Value error, ')}{got}")
        raise ConfigError(f"--policy {path}: " + "; ".join(problems)) from None
