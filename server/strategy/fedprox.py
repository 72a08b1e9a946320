"""FedProx (Li et al. 2020, "Federated optimization in heterogeneous networks"): each hospital's local
loss gets a proximal term μ/2·‖w − w_global‖², which keeps its local epochs from drifting far from the
global model towards what its own data alone wants; the coordinator then averages as FedAvg does.

The term is asked for in the round's training settings (``TrainSettings.proximal_mu``, on the wire
``TrainConfig.proximal_mu``) and added by each hospital (common/ml/training.py); a hospital that
cannot add it (DP-SGD) refuses the task. Hospitals older than the field ignore it.
"""

from __future__ import annotations

from medfed.server.strategy.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        if not mu > 0:
            raise ValueError(f"FedProx needs μ > 0, got {mu}")
        self.mu = mu

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "prox_mu": self.mu}
