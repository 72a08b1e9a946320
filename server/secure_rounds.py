"""The driver's side of a securely aggregated round: choose its parameters, then move it through its
stages, each closed when every hospital it waits for answered or at its deadline.

Keys and shares are exchanged right after the task arrives (``--secure-stage-timeout`` each); the
masked vectors come after local training (``--round-timeout``); confirmations and reveals follow
(``--secure-stage-timeout`` each). A stage left with fewer than the threshold ends the round as
failed: the previous global model is kept, as for any failed round, and nothing is unmasked.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import numpy as np

from medfed.common.secagg import vector
from medfed.common.secagg.graph import degree
from medfed.common.secagg.messages import Parameters, default_threshold
from medfed.server.config import ServerConfig
from medfed.server.coordinator import Coordinator
from medfed.server.rounds import RoundOutcome, Task
from medfed.server.secure_aggregation import SecureAccumulator, SecureRound

log = logging.getLogger("medfed.server")

STAGES = ("keys", "shares", "masked updates", "confirmations", "reveals")


def secure_parameters(
    cfg: ServerConfig, coordinator: Coordinator, selected: list[str], global_state: Mapping[str, np.ndarray]
) -> Parameters:
    names = sorted(selected)
    neighbourhood = degree(len(names)) + 1
    threshold = min(cfg.secure_threshold or default_threshold(neighbourhood), neighbourhood)
    return Parameters(
        tuple((n, coordinator.joined_examples(n)) for n in names), threshold, os.urandom(32), cfg.secure_clip,
        vector.length(global_state),
    )  # fmt: skip


def run_secure_round(
    cfg: ServerConfig, coordinator: Coordinator, task: Task, federation: str, global_state: Mapping[str, np.ndarray]
) -> RoundOutcome:
    parameters = task.settings.secure_aggregation
    assert parameters is not None
    setup = parameters.for_round(federation, task.round)
    accumulator = SecureAccumulator(global_state, SecureRound(setup))
    coordinator.open_round(task, list(setup.names), accumulator, min_fit=1)
    coordinator.monitor.round_opened(task.round, setup.names, cfg.round_timeout)
    for stage, what in enumerate(STAGES, 1):
        timeout = cfg.round_timeout if stage == 3 else cfg.secure_stage_timeout
        missing = coordinator.secure_wait(stage, time.monotonic() + timeout)
        if coordinator.finished is not None:
            break
        if missing:
            line = f"round {task.round}: no {what} from {', '.join(sorted(missing))} within {timeout:.0f} s"
            log.warning("%s; the secure round goes on without them", line)
            coordinator.monitor.event("timeout", line)
        if stage < len(STAGES) and (failed := coordinator.secure_advance(stage)) is not None:
            log.error("round %d: %s", task.round, failed)
            break
    return coordinator.close_round()
