"""SCAFFOLD on the hospital's side (Karimireddy et al. 2020, "SCAFFOLD: stochastic controlled averaging
for federated learning", option II of their algorithm).

Each hospital's local steps drift towards what its own data wants (client drift, the reason FedAvg
slows down on non-IID hospitals). SCAFFOLD corrects every local gradient by c − c_i, where c estimates
the federation's update direction and c_i this hospital's: a step then follows g_i − c_i + c. After
K local SGD steps at learning rate η from the global model x to y_i, the hospital's new control
variate is c_i⁺ = c_i − c + (x − y_i) / (K η), and it returns Δc_i = c_i⁺ − c_i beside its weights;
the coordinator moves c by the weighted mean of the Δc_i (server/strategy/scaffold.py).

c_i is kept in the data folder (client/local_state.py) together with the value it replaced, so that a
round trained again (after a lost upload or a restart) starts from the same c_i as the first try.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfed.client.local_state import LocalState, fitting
from medfed.common.limits import SCAFFOLD_CONTROL
from medfed.common.tensors import StateDict

KIND = "scaffold"
BEFORE, AFTER = "before.", "after."


def split_control(state: Mapping[str, np.ndarray]) -> tuple[StateDict, StateDict]:
    """A task's tensors -> (the model, the server's control variate c by parameter name)."""
    model = {k: v for k, v in state.items() if not k.startswith(SCAFFOLD_CONTROL)}
    control = {k[len(SCAFFOLD_CONTROL) :]: v for k, v in state.items() if k.startswith(SCAFFOLD_CONTROL)}
    return model, control


class HospitalControl:
    """This hospital's control variate c_i in one federation."""

    def __init__(self, store: LocalState, federation: str) -> None:
        self._store, self._federation = store, federation

    def before(self, round_number: int, server: Mapping[str, np.ndarray]) -> StateDict:
        """c_i as it stood before ``round_number`` (zeros in a hospital's first round)."""
        kept = self._store.load(self._federation, KIND)
        if kept is None:
            return {name: np.zeros_like(value) for name, value in server.items()}
        prefix = BEFORE if kept.round == round_number else AFTER
        own = {k[len(prefix) :]: v for k, v in kept.tensors.items() if k.startswith(prefix)}
        return fitting(own, server, "control variate", self._store.path(self._federation, KIND))

    def after(
        self,
        round_number: int,
        *,
        own: Mapping[str, np.ndarray],
        server: Mapping[str, np.ndarray],
        start: Mapping[str, np.ndarray],
        trained: Mapping[str, np.ndarray],
        steps: int,
        lr: float,
    ) -> StateDict:
        """Keep c_i⁺ and return Δc_i under the wire's names (``SCAFFOLD_CONTROL`` + parameter name)."""
        new = next_control(own, server, start, trained, steps, lr)
        kept = {BEFORE + k: v for k, v in own.items()} | {AFTER + k: v for k, v in new.items()}
        self._store.save(self._federation, KIND, round_number, kept)
        return {
            SCAFFOLD_CONTROL + name: np.asarray((value.astype(np.float64) - own[name]).astype(value.dtype))
            for name, value in new.items()
        }


def next_control(
    own: Mapping[str, np.ndarray],
    server: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    steps: int,
    lr: float,
) -> StateDict:
    """c_i⁺ = c_i − c + (x − y_i) / (K η); with no step taken there is nothing to learn from: c_i."""
    if steps == 0:
        return dict(own)
    out: StateDict = {}
    for name, c_i in own.items():
        moved = start[name].astype(np.float64) - trained[name]
        value = c_i.astype(np.float64) - server[name] + moved / (steps * lr)
        out[name] = np.asarray(value.astype(c_i.dtype))
    return out
