"""fed-client's settings: one pydantic model, filled from --config (TOML) and flags, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from medfed.client.attack import Attack, parse_attack
from medfed.common.config import TlsFiles, check_address
from medfed.common.dp.mechanisms import DpSettings
from medfed.common.errors import ConfigError
from medfed.common.limits import HOSPITAL_NAME


class ClientConfig(TlsFiles):
    model_config = ConfigDict(extra="forbid")

    data: Path
    server: Annotated[str, AfterValidator(check_address)]
    name: str | None = Field(None, pattern=HOSPITAL_NAME.pattern)
    server_name: str | None = Field(None, min_length=1, max_length=253)
    device: str = "auto"
    threads: int | None = Field(None, ge=1, le=1024)
    max_wait: float = Field(120.0, gt=0)
    progress: bool | None = None
    """None: progress bars only when standard error is a terminal (never carriage returns in a log file)"""
    verbose: bool = False
    dp_clip: float | None = Field(None, gt=0, allow_inf_nan=False)
    dp_noise_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False)
    dp_sgd: bool = False
    dp_delta: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    dp_target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    dp_ledger: Path | None = None
    policy: Path | None = None
    """the hospital's policy file (client/policy.py): what this node will and will not do"""
    stay: bool = False
    """keep running after a federation ends and take part in the coordinator's next one"""
    state_dir: Path | None = None
    """where SCAFFOLD's control variate and FedBN's normalisation layers are kept (default DATA/medfed-state)"""
    classes: list[str] | None = None
    class_map: dict[str, str] | None = None
    image_size: int | None = Field(None, ge=4, le=1024)
    simulate_attack: str | None = None
    """research only: misbehave as a poisoning hospital would (client/attack.py)"""

    @field_validator("simulate_attack")
    @classmethod
    def _known_attack(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_attack(value)
            except ConfigError as exc:
                raise ValueError(str(exc).split(": ", 1)[1]) from None
        return value

    @property
    def attack(self) -> Attack | None:
        return parse_attack(self.simulate_attack) if self.simulate_attack is not None else None

    @field_validator("class_map", mode="before")
    @classmethod
    def _split_class_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = [p.strip() for p in value.split(",") if p.strip()]
        if not pairs or any(p.count("=") != 1 for p in pairs):
            raise ValueError("give FOLDER=CLASS pairs, comma-separated, e.g. NORMAL=normal,PNEUMONIA=pneumonia")
        return {folder.strip(): name.strip() for folder, name in (p.split("=") for p in pairs)}

    @field_validator("class_map")
    @classmethod
    def _nonempty_pairs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and any(not k or not v for k, v in value.items()):
            raise ValueError("every FOLDER=CLASS pair needs both a folder and a class name")
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, value: object) -> object:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError("give at least two distinct class names, comma-separated, in label order")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClientConfig:
        if self.server_name is not None and not self.tls:
            raise ValueError("--server-name only applies with TLS")
        if (self.dp_clip is None) != (self.dp_noise_multiplier is None):
            raise ValueError("--dp-clip and --dp-noise-multiplier go together: give both or neither")
        if self.dp_sgd and self.dp_clip is None:
            raise ValueError("--dp-sgd needs --dp-clip (per-patient gradient bound) and --dp-noise-multiplier")
        return self

    @property
    def own_dp(self) -> DpSettings | None:
        """The hospital's own differential privacy, from its flags."""
        if self.dp_clip is None or self.dp_noise_multiplier is None:
            return None
        return DpSettings("dp_sgd" if self.dp_sgd else "local", self.dp_clip, self.dp_noise_multiplier)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        kind = value.split(":", 1)[0]
        if kind not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value
