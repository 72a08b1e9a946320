"""fed-client's settings: one pydantic model, filled from --config (TOML) and flags, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from medfed.common.config import HOSPITAL_NAME, TlsFiles, check_address


class ClientConfig(TlsFiles):
    model_config = ConfigDict(extra="forbid")

    data: Path
    server: Annotated[str, AfterValidator(check_address)]
    name: str | None = Field(None, pattern=HOSPITAL_NAME.pattern)
    server_name: str | None = Field(None, min_length=1, max_length=253)
    device: str = "auto"
    threads: int | None = Field(None, ge=1, le=1024)
    max_wait: float = Field(120.0, gt=0)
    progress: bool = True
    verbose: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ClientConfig:
        if self.server_name is not None and not self.tls:
            raise ValueError("--server-name only applies with TLS")
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        kind = value.split(":", 1)[0]
        if kind not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value
