"""From fed-server's settings to a strategy: the one place that knows every strategy's flags and their
defaults (the strategies themselves are plain numpy and know nothing of configuration)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from medfed.common.limits import LocalOptimizer
from medfed.server.config import ServerConfig
from medfed.server.run_dir import UPDATE_STORE
from medfed.server.strategy import Strategy
from medfed.server.strategy.central_dp import AdaptiveClipping, DpFedAvg
from medfed.server.strategy.fedavg import FedAvg
from medfed.server.strategy.fedavgm import FedAvgM
from medfed.server.strategy.fedbn import FedBN
from medfed.server.strategy.fedopt import FedOpt
from medfed.server.strategy.fedprox import FedProx
from medfed.server.strategy.krum import Krum
from medfed.server.strategy.median import Median
from medfed.server.strategy.norm_bound import NormBound
from medfed.server.strategy.scaffold import Scaffold
from medfed.server.strategy.trimmed_mean import TrimmedMean

FEDAVGM_LR, FEDOPT_LR = 1.0, 0.01
"""default server learning rates: FedAvgM's 1 makes it FedAvg plus momentum; Reddi et al.'s range"""
PROX_MU = 0.01
"""FedProx's default μ (Li et al. 2020 tried 0.001 to 1)"""
TRIM_FRACTION = 0.2
"""trimmed-mean's default β: with 5 to 9 hospitals one is trimmed at each end"""
SCAFFOLD_SMALL_LR = 0.005
"""below it, a learning rate is taken for one meant for Adam, and SCAFFOLD's SGD warned about"""


def warnings(cfg: ServerConfig) -> list[str]:
    """What the chosen strategy promises less of with this many hospitals, for the start-up log."""
    n, out = cfg.effective_min_fit, []
    if cfg.strategy in ("krum", "multi-krum"):
        f = 1 if cfg.krum_f is None else cfg.krum_f
        if n < 2 * f + 3:
            out.append(
                f"{cfg.strategy} tolerates --krum-f {f} poisoned hospitals only with at least {2 * f + 3} updates "
                f"a round; with {n} it still drops the farthest update, but promises no more"
            )
    if cfg.strategy == "scaffold" and cfg.lr < SCAFFOLD_SMALL_LR:
        out.append(
            f"scaffold's hospitals train with plain SGD (as in the paper), and --lr {cfg.lr:g} suits Adam: "
            "SGD usually needs 0.01 to 0.1"
        )
    if cfg.strategy == "trimmed-mean":
        beta = TRIM_FRACTION if cfg.trim_fraction is None else cfg.trim_fraction
        if int(beta * n) == 0:
            needed = f"at least {math.ceil(1 / beta)}" if beta else "a --trim-fraction above 0"
            out.append(
                f"trimmed-mean with --trim-fraction {beta:g} trims nothing from {n} updates (it needs {needed}); "
                "it is then the unweighted mean"
            )
    return out


@dataclass(frozen=True)
class LocalRequests:
    """What the strategy asks of each hospital's training, in every round's settings."""

    proximal_mu: float = 0.0
    """FedProx's μ (0: none)"""
    scaffold: bool = False
    local_normalization: bool = False
    optimizer: LocalOptimizer = "adam"


def local_requests(cfg: ServerConfig) -> LocalRequests:
    if cfg.strategy == "fedprox":
        return LocalRequests(proximal_mu=cfg.prox_mu or PROX_MU)
    if cfg.strategy == "scaffold":
        return LocalRequests(scaffold=True, optimizer="sgd")  # the paper's local steps: plain SGD
    if cfg.strategy == "fedbn":
        return LocalRequests(local_normalization=True)
    return LocalRequests()


def central_strategy(cfg: ServerConfig) -> DpFedAvg:
    """DP-FedAvg from the --dp-* flags (only called with --dp-central)."""
    assert cfg.dp_clip is not None and cfg.dp_noise_multiplier is not None
    adaptive = AdaptiveClipping(cfg.dp_target_quantile, cfg.dp_clip_learning_rate) if cfg.dp_adaptive_clip else None
    return DpFedAvg(cfg.dp_clip, cfg.dp_noise_multiplier, adaptive=adaptive)


def build_strategy(cfg: ServerConfig) -> Strategy:
    """The run's strategy: --dp-central's DP-FedAvg, else --strategy with its settings, behind
    --norm-bound when given."""
    if cfg.dp_central:
        return central_strategy(cfg)
    inner = _strategy(cfg)
    if cfg.norm_bound is None:
        return inner
    return NormBound(inner, cfg.norm_bound, alone=cfg.strategy == "norm-bound")


def _strategy(cfg: ServerConfig) -> Strategy:
    store = cfg.out / UPDATE_STORE
    if cfg.strategy == "median":
        return Median(store)
    if cfg.strategy == "trimmed-mean":
        return TrimmedMean(store, TRIM_FRACTION if cfg.trim_fraction is None else cfg.trim_fraction)
    if cfg.strategy in ("krum", "multi-krum"):
        return Krum(store, 1 if cfg.krum_f is None else cfg.krum_f, 1 if cfg.strategy == "krum" else cfg.krum_m)
    if cfg.strategy == "fedprox":
        return FedProx(cfg.prox_mu or PROX_MU)
    if cfg.strategy == "scaffold":
        return Scaffold(cfg.server_lr or 1.0)
    if cfg.strategy == "fedbn":
        return FedBN()
    if cfg.strategy == "fedavgm":
        momentum = 0.9 if cfg.server_momentum is None else cfg.server_momentum
        return FedAvgM(cfg.server_lr or FEDAVGM_LR, momentum)
    if cfg.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        return FedOpt(
            cfg.strategy,
            server_lr=cfg.server_lr or FEDOPT_LR,
            beta1=0.9 if cfg.server_beta1 is None else cfg.server_beta1,
            beta2=0.99 if cfg.server_beta2 is None else cfg.server_beta2,
            tau=cfg.server_tau or 1e-3,
        )
    return FedAvg()
