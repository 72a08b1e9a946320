"""fed-server's settings: one pydantic model, filled from --config (TOML) and flags, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from medfed.common.config import TlsFiles, check_address


class ServerConfig(TlsFiles):
    model_config = ConfigDict(extra="forbid")

    address: Annotated[str, AfterValidator(check_address)] = "0.0.0.0:8443"
    rounds: int = Field(10, ge=1, le=100_000)
    min_clients: int = Field(2, ge=1)
    clients_per_round: int | None = Field(None, ge=1)
    min_fit: int | None = Field(None, ge=1)
    round_timeout: float = Field(600.0, gt=0)
    join_timeout: float = Field(3600.0, gt=0)
    model: Literal["cnn", "resnet18"] = "cnn"
    local_epochs: int = Field(1, ge=0, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=65_536)
    seed: int = Field(0, ge=0)
    test_data: Path | None = None
    out: Path = Path("fed-out")
    force: bool = False
    tls_crl: Path | None = None
    allow: list[str] | None = None
    max_examples: int = Field(1_000_000, ge=1)
    port_file: Path | None = None
    device: str = "auto"
    poll_timeout: float = Field(20.0, gt=0, le=300)
    finish_grace: float = Field(15.0, ge=0)
    max_workers: int = Field(256, ge=4)
    verbose: bool = False

    @field_validator("allow", mode="before")
    @classmethod
    def _split_allow(cls, value: object) -> object:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        if self.tls_crl is not None and not self.tls:
            raise ValueError("--tls-crl needs --tls-cert, --tls-key and --tls-ca")
        if self.clients_per_round is not None and self.clients_per_round > self.min_clients:
            raise ValueError(
                f"--clients-per-round ({self.clients_per_round}) cannot exceed --min-clients ({self.min_clients})"
            )
        if self.min_fit is not None and self.min_fit > (self.clients_per_round or self.min_clients):
            raise ValueError("--min-fit cannot exceed the number of hospitals chosen per round")
        return self

    @property
    def effective_min_fit(self) -> int:
        """How many updates a round needs: --min-fit, else every hospital --min-clients guarantees."""
        return self.min_fit or min(self.min_clients, self.clients_per_round or self.min_clients)
