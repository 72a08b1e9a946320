"""What an operator may change while a run goes on (fed-admin): stop it, remove a hospital, train
further. Transport-free, like the coordinator: server/admin_service.py authenticates the operator and
maps the errors raised here to status codes.

The driver reads ``rounds`` before every round, so an extension takes effect at the next one; a stop
ends the run the way a signal does (the last completed round stays checkpointed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from medfed.common.errors import ConfigError
from medfed.common.peer_text import cleaned
from medfed.server.coordinator import Coordinator
from medfed.server.errors import InvalidRequest, Rejected

log = logging.getLogger("medfed.server")

MAX_ROUNDS = 100_000


class RunControl:
    def __init__(
        self,
        coordinator: Coordinator,
        rounds: int,
        *,
        save_removed: Callable[[dict[str, str]], None] = lambda removed: None,
        check_rounds: Callable[[int], None] = lambda rounds: None,
    ) -> None:
        """``save_removed`` keeps the removed hospitals with the run (for --resume); ``check_rounds`` raises
        ConfigError for a number of rounds the run's settings cannot take (a privacy target it would pass)."""
        self._coordinator = coordinator
        self._rounds = rounds
        self._lock = threading.Lock()
        self._save_removed = save_removed
        self._check_rounds = check_rounds
        self.stopped_by: str | None = None
        """the operator who stopped the run, once one did"""

    @property
    def rounds(self) -> int:
        """The last round the run trains (the configured --rounds until an operator extends it)."""
        with self._lock:
            return self._rounds

    def stop(self, operator: str, *, resumable: bool, reason: str = "") -> str:
        finished = self._coordinator.finished
        if finished is not None:
            raise Rejected(f"the run is already ending ({finished.reason})")
        why = f"stopped by the operator {operator}" + (f": {cleaned(reason)}" if reason else "")
        with self._lock:
            self.stopped_by = operator
        self._coordinator.monitor.event("admin", why + (" (resumable)" if resumable else ""))
        log.warning("%s%s", why, "; hospitals wait for a resumed coordinator" if resumable else "")
        self._coordinator.finish(why, self._coordinator.monitor.snapshot().rounds_completed, resumable=resumable)
        return f"the run stops: {why}" + ("; continue it with fed-server --resume" if resumable else "")

    def remove(self, operator: str, name: str, reason: str = "") -> str:
        why = f"removed by the operator {operator}" + (f": {cleaned(reason)}" if reason else "")
        self._coordinator.remove(name, why)
        self._save_removed(self._coordinator.removed())
        self._coordinator.monitor.event("admin", f"{name} {why}")
        log.warning("%s %s; it is refused for the rest of this run", name, why)
        return (
            f"{name}'s session is closed and it is refused for the rest of this run; to refuse its certificate "
            f"everywhere, revoke it: fed-certs revoke --name {name}"
        )

    def extend(self, operator: str, rounds: int) -> str:
        status = self._coordinator.monitor.snapshot()
        if self._coordinator.finished is not None:
            raise Rejected("the run is already ending: nothing to extend")
        floor = max(status.round, status.rounds_completed + 1)
        if not floor <= rounds <= MAX_ROUNDS:
            raise InvalidRequest(f"--rounds {rounds}: give a round from {floor} (the one under way) to {MAX_ROUNDS}")
        try:
            self._check_rounds(rounds)
        except ConfigError as exc:
            raise InvalidRequest(str(exc)) from None
        with self._lock:
            before, self._rounds = self._rounds, rounds
        self._coordinator.monitor.set_total_rounds(rounds)
        line = f"the run now trains {rounds} rounds instead of {before} (set by the operator {operator})"
        self._coordinator.monitor.event("admin", line)
        log.warning("%s; a restart needs --rounds %d with --resume", line, rounds)
        return line + f"; when restarting, give --resume --rounds {rounds}"
