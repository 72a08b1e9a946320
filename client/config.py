"""fed-client's settings: one pydantic model, filled from --config (TOML) and flags, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from medfed.common.config import check_address


class ClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Path
    server: Annotated[str, AfterValidator(check_address)]
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    insecure: bool = False
    device: str = "auto"
    threads: int | None = Field(None, ge=1, le=1024)
    max_wait: float = Field(120.0, gt=0)
    progress: bool = True
    verbose: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        kind = value.split(":", 1)[0]
        if kind not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value
