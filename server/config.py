"""fed-server's settings: one pydantic model, filled from --config (TOML) and flags, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from medfed.common.config import TlsFiles, check_address, is_loopback, parse_address
from medfed.common.dp.accounting import default_delta
from medfed.common.dp.mechanisms import DpSettings
from medfed.common.limits import Encoding, LrSchedule, ModelName, StrategyName

DEFAULT_DASHBOARD = "127.0.0.1:8080"

TRAINING_SETTINGS = (
    "model", "seed", "local_epochs", "lr", "batch_size", "dp_central", "dp_local", "dp_clip", "dp_noise_multiplier",
    "dp_delta", "dp_adaptive_clip", "dp_target_quantile", "dp_clip_learning_rate", "augment", "lr_schedule",
    "strategy", "server_lr", "server_momentum", "server_beta1", "server_beta2", "server_tau", "trim_fraction",
    "krum_f", "krum_m", "norm_bound", "prox_mu", "secure_aggregation", "secure_clip",
)  # fmt: skip
"""what --resume keeps fixed (see ServerConfig.resume_settings)"""
STRATEGY_SETTINGS: dict[str, tuple[StrategyName, ...]] = {
    "server_lr": ("fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"),
    "server_momentum": ("fedavgm",),
    "server_beta1": ("fedadam", "fedyogi", "fedadagrad"),
    "server_beta2": ("fedadam", "fedyogi"),
    "server_tau": ("fedadam", "fedyogi", "fedadagrad"),
    "trim_fraction": ("trimmed-mean",),
    "krum_f": ("krum", "multi-krum"),
    "krum_m": ("multi-krum",),
    "prox_mu": ("fedprox",),
}
"""each strategy setting and the strategies that use it"""


class ServerConfig(TlsFiles):
    model_config = ConfigDict(extra="forbid")

    address: Annotated[str, AfterValidator(check_address)] = "0.0.0.0:8443"
    rounds: int = Field(10, ge=1, le=100_000)
    min_clients: int = Field(2, ge=1)
    clients_per_round: int | None = Field(None, ge=1)
    over_select: int = Field(0, ge=0)
    min_fit: int | None = Field(None, ge=1)
    round_timeout: float = Field(600.0, gt=0)
    join_timeout: float = Field(3600.0, gt=0)
    model: ModelName = "cnn"
    local_epochs: int = Field(1, ge=0, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=65_536)
    seed: int = Field(0, ge=0)
    test_data: Path | None = None
    image_size: int | None = Field(None, ge=4, le=1024)
    pretrained: Path | None = None
    augment: bool = False
    lr_schedule: LrSchedule = "constant"
    update_encoding: Encoding = "lossless"
    out: Path = Path("fed-out")
    force: bool = False
    resume: bool = False
    tls_crl: Path | None = None
    allow: list[str] | None = None
    max_examples: int = Field(1_000_000, ge=1)
    max_concurrent_uploads: int = Field(16, ge=1, le=1000)
    max_concurrent_downloads: int = Field(16, ge=1, le=1000)
    stall_timeout: float = Field(60.0, gt=0)
    port_file: Path | None = None
    health_address: Annotated[str, AfterValidator(check_address)] | None = None
    dashboard_address: str | None = DEFAULT_DASHBOARD
    """the live dashboard and /metrics; None (``off``) for none"""
    dashboard_token: str | None = Field(None, min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$")
    dashboard_port_file: Path | None = None
    device: str = "auto"
    poll_timeout: float = Field(20.0, gt=0, le=300)
    heartbeat_timeout: float = Field(90.0, gt=0)
    finish_grace: float = Field(15.0, ge=0)
    max_workers: int = Field(256, ge=4)
    verbose: bool = False
    strategy: StrategyName = "fedavg"
    server_lr: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    server_momentum: float | None = Field(None, ge=0, lt=1)
    server_beta1: float | None = Field(None, ge=0, lt=1)
    server_beta2: float | None = Field(None, ge=0, lt=1)
    server_tau: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    trim_fraction: float | None = Field(None, ge=0, lt=0.5)
    krum_f: int | None = Field(None, ge=0)
    krum_m: int | None = Field(None, ge=1)
    norm_bound: float | None = Field(None, gt=0, allow_inf_nan=False)
    prox_mu: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    secure_aggregation: bool = False
    secure_clip: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    secure_threshold: int | None = Field(None, ge=2)
    secure_stage_timeout: float = Field(120.0, gt=0)
    dp_central: bool = False
    dp_local: bool = False
    dp_clip: float | None = Field(None, gt=0, allow_inf_nan=False)
    dp_noise_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False)
    dp_delta: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    dp_target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    dp_adaptive_clip: bool = False
    dp_target_quantile: float = Field(0.5, gt=0, lt=1)
    dp_clip_learning_rate: float = Field(0.2, gt=0, le=10, allow_inf_nan=False)

    @field_validator("allow", mode="before")
    @classmethod
    def _split_allow(cls, value: object) -> object:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value

    @field_validator("dashboard_address")
    @classmethod
    def _dashboard_address(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("off", "none", ""):
            return None
        return check_address(value)

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        if self.dashboard_address is not None and self.dashboard_token is None and not self.tls:
            host = parse_address(self.dashboard_address)[0]
            if not is_loopback(host):
                raise ValueError(
                    f"--dashboard-address {self.dashboard_address} is reachable from other machines: give "
                    "--dashboard-token (16 or more characters), run the coordinator with TLS (then the dashboard "
                    "takes operators' certificates), or listen on 127.0.0.1"
                )
        if self.tls_crl is not None and not self.tls:
            raise ValueError("--tls-crl needs --tls-cert, --tls-key and --tls-ca")
        if self.clients_per_round is not None and self.clients_per_round > self.min_clients:
            raise ValueError(
                f"--clients-per-round ({self.clients_per_round}) cannot exceed --min-clients ({self.min_clients})"
            )
        if self.min_fit is not None and self.min_fit > (self.clients_per_round or self.min_clients):
            raise ValueError("--min-fit cannot exceed the number of hospitals chosen per round")
        if self.heartbeat_timeout <= self.poll_timeout:
            raise ValueError(
                f"--heartbeat-timeout must exceed the {self.poll_timeout:g} s a hospital's long poll may last"
            )
        if self.over_select and self.clients_per_round is None:
            raise ValueError("--over-select needs --clients-per-round (the number of updates a round closes at)")
        if self.resume and self.force:
            raise ValueError("--resume continues the run in --out and --force replaces it: choose one")
        self._check_dp()
        self._check_strategy()
        self._check_secure()
        return self

    def _check_secure(self) -> None:
        """Secure aggregation hides each update, so what needs to see one cannot run beside it."""
        if not self.secure_aggregation:
            for flag in ("secure_threshold",):
                if getattr(self, flag) is not None:
                    raise ValueError(f"--{flag.replace('_', '-')} needs --secure-aggregation")
            return
        if not self.tls:
            raise ValueError(
                "--secure-aggregation needs TLS: each hospital signs its round keys with its certificate's key, "
                "which is how the others know the coordinator did not substitute its own"
            )
        refused = {
            "--dp-central": self.dp_central
            and "it clips and noises each update on the coordinator, which never sees "
            "one (use --dp-local: hospitals noise before masking)",
            f"--strategy {self.strategy}": self.strategy not in ("fedavg", "fedprox")
            and "it needs the hospitals' "
            "individual updates (or a server optimizer state this version does not keep under masks); use fedavg "
            "or fedprox",
            f"--update-encoding {self.update_encoding}": self.update_encoding != "lossless"
            and "secure aggregation quantizes updates itself (fixed point modulo 2^32)",
            "--norm-bound": self.norm_bound is not None
            and "it scales individual updates; --secure-clip bounds every coordinate instead",
            "--over-select": self.over_select > 0 and "a secure round's stages wait for every chosen hospital",
        }
        for flag, why in refused.items():
            if why:
                raise ValueError(f"--secure-aggregation cannot be combined with {flag}: {why}")

    def _check_strategy(self) -> None:
        """A strategy's own settings only with that strategy, and no strategy beside central DP."""
        if self.dp_central and self.strategy != "fedavg":
            raise ValueError(
                f"--dp-central is its own strategy (DP-FedAvg: clipped, equally weighted, noised); it cannot "
                f"be combined with --strategy {self.strategy}"
            )
        if self.strategy == "norm-bound" and self.norm_bound is None:
            raise ValueError("--strategy norm-bound needs --norm-bound B (the largest L2 norm an update may move by)")
        if self.strategy == "scaffold":
            self._check_scaffold()
        if self.norm_bound is not None and self.dp_central:
            raise ValueError("--norm-bound is not needed with --dp-central, which clips every update to --dp-clip")
        for flag, users in STRATEGY_SETTINGS.items():
            if getattr(self, flag) is not None and self.strategy not in users:
                raise ValueError(
                    f"--{flag.replace('_', '-')} is a setting of --strategy {' or '.join(users)}, not {self.strategy}"
                )

    def _check_scaffold(self) -> None:
        if self.update_encoding == "int8":
            raise ValueError(
                "--strategy scaffold cannot use --update-encoding int8: int8 updates are differences from the "
                "round's global tensors, and the control variates' changes that SCAFFOLD returns are not; "
                "use fp16 or bf16 to send fewer bytes"
            )
        if self.dp_local:
            raise ValueError(
                "--strategy scaffold cannot be combined with --dp-local: each hospital's control variate is "
                "computed from its data and would travel outside the clipped, noised update"
            )
        if self.norm_bound is not None:
            raise ValueError(
                "--norm-bound cannot stand in front of --strategy scaffold: it would clip the control variates' "
                "changes along with the model's"
            )

    def _check_dp(self) -> None:
        if self.dp_central and self.dp_local:
            raise ValueError("choose one of --dp-central and --dp-local")
        mode = "--dp-central" if self.dp_central else "--dp-local" if self.dp_local else None
        knobs = (("--dp-clip", self.dp_clip), ("--dp-noise-multiplier", self.dp_noise_multiplier))
        given = [flag for flag, value in knobs if value is not None]
        if mode is None and given:
            raise ValueError(f"{given[0]} needs --dp-central or --dp-local")
        if mode is not None and (self.dp_clip is None or self.dp_noise_multiplier is None):
            raise ValueError(f"{mode} needs --dp-clip and --dp-noise-multiplier")
        central_only = (
            ("--dp-adaptive-clip", self.dp_adaptive_clip),
            ("--dp-target-epsilon", self.dp_target_epsilon is not None),
            ("--dp-delta", self.dp_delta is not None),
        )
        for flag, present in central_only:
            if present and not self.dp_central:
                hint = " (with --dp-local each hospital keeps its own budget: fed-client has the flag)"
                raise ValueError(f"{flag} needs --dp-central{hint if self.dp_local else ''}")

    def resume_settings(self) -> dict[str, Any]:
        """What a resumed run must share with the one it continues: the training settings. The
        operational ones (--rounds, --min-clients, --min-fit, --clients-per-round, --over-select, the
        timeouts, the limits, transport) may change, so that a run can go on with fewer hospitals."""
        settings = {key: getattr(self, key) for key in TRAINING_SETTINGS}
        if self.dp_central:  # δ's default depends on --min-clients, which may change: the value is fixed
            settings["dp_delta"] = self.central_delta
        return settings

    @property
    def local_dp_request(self) -> DpSettings | None:
        if not self.dp_local or self.dp_clip is None or self.dp_noise_multiplier is None:
            return None
        return DpSettings("local", self.dp_clip, self.dp_noise_multiplier)

    @property
    def central_delta(self) -> float:
        """δ per hospital: --dp-delta, else min(1e-5, 1/(10 · --min-clients))."""
        return self.dp_delta or default_delta(self.min_clients)

    @property
    def effective_min_fit(self) -> int:
        """How many updates a round needs: --min-fit, else every hospital --min-clients guarantees."""
        return self.min_fit or min(self.min_clients, self.clients_per_round or self.min_clients)
