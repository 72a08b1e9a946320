"""The coordinator: a small facade over who is in the federation (server/membership.py) and the open
round (server/rounds.py), both under one condition variable; uploads (server/uploads.py) and secure
aggregation's stages (server/secure_stages.py) are mixed in, under the same condition.

No gRPC in here: the servicer translates calls into these methods and the errors of server/errors.py
into status codes, and the driver (server/driver.py) opens and closes rounds. Hospitals long-poll
``next_instruction`` and are woken when a round opens or the federation ends.

A session ends when its hospital joins again (from another process), or at once when its certificate
is revoked (``revoke``): its polls and downloads are refused from then on and no round waits for it.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from medfed.common.data.folders import DatasetInfo
from medfed.common.peer_text import quoted
from medfed.server.errors import CoordinatorError, NotFound, PermissionDenied, Rejected
from medfed.server.intake import Intake, WaitingLine
from medfed.server.live.monitor import Monitor
from medfed.server.membership import Hospital, Membership, Presence
from medfed.server.rounds import (
    Finished,
    Instruction,
    OpenRound,
    RoundOutcome,
    Task,
    Wait,
)
from medfed.server.secure_stages import SecureStages
from medfed.server.strategy import Accumulator
from medfed.server.uploads import ReceiptIssuer, Uploads

log = logging.getLogger("medfed.server")

DEFAULT_MAX_EXAMPLES = 1_000_000
MEMORY_FLOOR = 300_000_000
"""the coordinator's memory bound is MEMORY_FLOOR + 4 x the model (streams beyond the few it always allows
stay within it: server/intake.py)"""
T = TypeVar("T")


class Coordinator(Uploads, SecureStages):
    def __init__(
        self,
        data_info: DatasetInfo | None = None,
        *,
        allowed: frozenset[str] | None = None,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        clock: Callable[[], float] = time.monotonic,
        federation_id: str | None = None,
        heartbeat_timeout: float | None = None,
        max_receiving: int = 2,
        intake: Intake | None = None,
        spool_dir: Path | None = None,
        monitor: Monitor | None = None,
        receipts: ReceiptIssuer | None = None,
    ) -> None:
        """``max_receiving``: uploads admitted at once at most (``intake`` for more say in it: server/intake.py);
        uploads beyond the ones held in memory are received into files in ``spool_dir`` (default the
        system's temporary folder); ``receipts``: what signs a receipt for each accepted update (none: no
        receipts)."""
        self.intake = intake or Intake(max_receiving, clock=clock)
        self._upload_line = WaitingLine()
        self.spool_dir = spool_dir or Path(tempfile.gettempdir()) / "medfed-uploads"
        self._cond = threading.Condition()
        self._fold_lock = threading.Lock()
        self._clock = clock
        self._members = Membership(data_info, allowed=allowed, max_examples=max_examples, clock=clock)
        self._round: OpenRound | None = None
        self._finished: Finished | None = None
        self.federation_id = federation_id or secrets.token_hex(8)
        self._heartbeat_timeout = heartbeat_timeout
        self.monitor = monitor or Monitor()
        """the live view (server/live/): told what happens here, read by the dashboard"""
        self._receipts = receipts

    # ----- membership ------------------------------------------------------------------------

    def join(
        self,
        name: str,
        num_examples: int,
        info: DatasetInfo,
        *,
        classes: tuple[int, ...] = (),
        certificate_expires: datetime | None = None,
    ) -> str:
        """Admit a hospital (``name`` is its certificate's common name under TLS); returns its session."""
        self._members.check_request(name, num_examples)
        with self._cond:
            if self._finished is not None:
                raise Rejected(f"the federation is over ({self._finished.reason})")
            hospital = self._members.admit(name, num_examples, info, classes)
            if self._round is not None and self._round.take_if_short(name):
                log.info("%s joins round %d, which was short of hospitals", name, self._round.task.round)
            self._cond.notify_all()
        self.monitor.joined(name, num_examples, certificate_expires)
        log.info(
            "%s joined with %d training examples (%d in the federation)", name, num_examples, len(self.hospitals())
        )
        return hospital.session_id

    def _hospital(self, session_id: str, caller: str | None) -> Hospital:
        """Caller holds the condition: the calling hospital, seen now (which ends a silence)."""
        hospital, back = self._members.caller(session_id, caller)
        self.monitor.seen(hospital.name)
        if back:
            if self._round is not None:
                self._round.take_if_short(hospital.name)  # the round is short of hospitals: it takes it back
            self._cond.notify_all()
        return hospital

    def heartbeat(self, session_id: str, *, caller: str | None = None) -> None:
        with self._cond:
            self._hospital(session_id, caller)

    def _drop_silent(self, current: OpenRound) -> None:
        """Caller holds the condition: stop waiting for chosen hospitals that stopped calling."""
        if self._heartbeat_timeout is None:
            return
        now = self._clock()
        for name in current.not_reported():
            hospital = self._members.hospitals.get(name)
            if hospital is None or now - hospital.last_seen <= self._heartbeat_timeout:
                continue
            current.selected.discard(name)
            hospital.presence = Presence.SILENT
            self.monitor.silent(name, now - hospital.last_seen)
            log.warning(
                "%s has been silent for %.0f s (--heartbeat-timeout): taken for gone; round %d goes on without it%s",
                name, now - hospital.last_seen, current.task.round,
                f" but now has {len(current.selected)} of the {current.min_fit} hospitals it needs (--min-fit)"
                if current.short else "",
            )  # fmt: skip

    def name_of(self, session_id: str) -> str | None:
        """The hospital a live session belongs to (None when it ended or never was)."""
        with self._cond:
            return self._members.name_of(session_id)

    def session_error(self, session_id: str) -> CoordinatorError | None:
        """Why a session can no longer be served (revoked, replaced), or None while it is live."""
        with self._cond:
            return self._members.session_error(session_id)

    def revoke(self, revoked: Mapping[str, str]) -> None:
        """End these hospitals' sessions now ({name: reason}; their certificates were revoked): their
        waiting polls and downloads are refused, and the open round stops waiting for them."""
        with self._cond:
            current = self._round
            for name, reason in sorted(revoked.items()):
                hospital = self._members.live(name)
                if hospital is None:
                    continue
                hospital.presence = Presence.LEFT
                self._members.close_session(hospital.session_id, PermissionDenied(f"{reason}; this session is closed"))
                self.monitor.refused(name, "session", "PERMISSION_DENIED", f"{reason}; this session is closed")
                if current is None or name in current.contributions:
                    log.warning("%s: %s; its session is closed", name, reason)
                    continue
                was_chosen = name in current.selected
                current.drop(name)
                short = was_chosen and current.short
                log.warning(
                    "%s: %s; its session is closed%s%s", name, reason,
                    f" and round {current.task.round} goes on without it" if was_chosen else "",
                    f", but the round now has {len(current.selected)} of the {current.min_fit} hospitals it needs "
                    f"(--min-fit): to go on with fewer, stop the coordinator and continue with --resume --min-fit "
                    f"{max(len(current.selected), 1)} (and --min-clients and --clients-per-round no larger)"
                    if short else "",
                )  # fmt: skip
            self._cond.notify_all()

    def remove(self, name: str, reason: str) -> None:
        """The operator's removal: end ``name``'s session as a revocation does, and refuse it from now on."""
        with self._cond:
            if name not in self._members.hospitals and name not in self._members.removed:
                raise NotFound(f"no hospital called {quoted(name)} has joined this federation")
            self._members.removed[name] = reason
        self.revoke({name: reason})

    def keep_out(self, removed: Mapping[str, str]) -> None:
        """Hospitals removed before a restart stay out of the resumed run."""
        with self._cond:
            self._members.removed.update(removed)

    def removed(self) -> dict[str, str]:
        with self._cond:
            return dict(self._members.removed)

    def leave(self, session_id: str, *, caller: str | None = None, reason: str = "") -> None:
        with self._cond:
            hospital = self._hospital(session_id, caller)
            hospital.presence = Presence.LEFT
            current = self._round
            if current is not None and hospital.name not in current.contributions:
                current.selected.discard(hospital.name)
                if current.short:
                    log.warning(
                        "%s left; round %d now has %d of the %d hospitals it needs (--min-fit): "
                        "the next hospital to join takes part in it",
                        hospital.name, current.task.round, len(current.selected), current.min_fit,
                    )  # fmt: skip
            self._cond.notify_all()
        self.monitor.left(hospital.name, reason)
        log.info("%s left the federation%s", hospital.name, f": {reason}" if reason else "")

    @property
    def data_info(self) -> DatasetInfo | None:
        with self._cond:
            return self._members.info

    def hospital_classes(self) -> dict[str, tuple[int, ...]]:
        """What each hospital that ever joined reported of its classes (empty tuples left out)."""
        with self._cond:
            return self._members.classes()

    def hospitals(self) -> list[str]:
        with self._cond:
            return self._members.present()

    def wait_for_hospitals(self, count: int, timeout: float) -> list[str]:
        """Wait until ``count`` hospitals have joined (or timeout / finish); returns who is there."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._finished is None:
                remaining = deadline - self._clock()
                if len(self._members.present()) >= count or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._members.present()

    # ----- instructions ----------------------------------------------------------------------

    def next_instruction(
        self,
        session_id: str,
        timeout: float,
        *,
        caller: str | None = None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Instruction:
        """Block until there is something for this hospital to do, or ``timeout`` seconds passed."""
        deadline = self._clock() + timeout
        with self._cond:
            hospital = self._hospital(session_id, caller)
            hospital.polls += 1
            mine = hospital.polls
            self._cond.notify_all()  # an older poll of this hospital returns: one waiting poll each
            while True:
                hospital = self._hospital(session_id, caller)
                if hospital.polls != mine:
                    return Wait("a newer poll of this hospital took over")
                if self._finished is not None:
                    if hospital.presence is Presence.ACTIVE:
                        hospital.presence = Presence.TOLD
                    self._cond.notify_all()
                    return self._finished
                current = self._round
                if current is not None and current.owes_update(hospital.name):
                    current.bytes_sent += current.task.payload.layout.total_bytes
                    self.monitor.downloading(hospital.name)
                    return current.task
                remaining = deadline - self._clock()
                if remaining <= 0 or not is_active():
                    return Wait("no task for this hospital yet")
                self._cond.wait(remaining)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def finished(self) -> Finished | None:
        with self._cond:
            return self._finished

    def finish(self, reason: str, rounds_completed: int, *, resumable: bool = False) -> None:
        """Tell every hospital (on its next poll, or now if it is waiting) that the federation is over,
        or, when ``resumable``, that this coordinator stops and a resumed one may follow."""
        with self._cond:
            if self._finished is None:
                self._finished = Finished(reason, rounds_completed, resumable)
            self._cond.notify_all()

    def wait_until_told(self, timeout: float) -> list[str]:
        """Give hospitals up to ``timeout`` seconds to hear that it is over; returns those that did not."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                untold = self._members.untold()
                remaining = deadline - self._clock()
                if not untold or remaining <= 0:
                    return untold
                self._cond.wait(remaining)

    # ----- rounds ----------------------------------------------------------------------------

    def open_round(
        self, task: Task, selected: list[str], accumulator: Accumulator, min_fit: int = 1, enough: int | None = None
    ) -> None:
        """Start a round for ``selected``; it needs ``min_fit`` updates to be aggregated and, with
        ``enough``, closes as soon as that many have arrived (the others' updates are then refused)."""
        with self._cond:
            self._round = OpenRound(task, set(selected), accumulator, min_fit, enough)
            self.intake.headroom.bound = MEMORY_FLOOR + 4 * task.payload.layout.total_bytes
            self.intake.model_bytes = task.payload.layout.total_bytes
            self._cond.notify_all()

    def add_to_round(self, names: list[str]) -> None:
        with self._cond:
            if self._round is not None:
                self._round.selected.update(names)
                self._cond.notify_all()

    def wait_for_round(self, deadline: float) -> RoundOutcome:
        """Wait until every selected hospital has reported and there are at least min_fit updates, the
        deadline passed, or the federation ended. A round short of min_fit keeps waiting for newcomers."""
        with self._cond:
            current = self._round
            if current is None:
                raise RuntimeError("no round is open")
            while self._finished is None:
                self._drop_silent(current)
                remaining = deadline - self._clock()
                if current.complete or remaining <= 0:
                    break
                self._cond.wait(min(remaining, self._heartbeat_timeout / 4) if self._heartbeat_timeout else remaining)
            return current.outcome()

    def close_round(self) -> RoundOutcome:
        with self._fold_lock, self._cond:
            current = self._round
            if current is None:
                raise RuntimeError("no round is open")
            self._round = None
            self._cond.notify_all()
            return current.outcome()
