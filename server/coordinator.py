"""The coordinator's state: who has joined, which round is open, what each hospital should do next.

No gRPC in here: the servicer translates calls into these methods and the errors of server/errors.py
into status codes, and the driver (``server/federation.py``) opens and closes rounds. Everything is
guarded by one condition variable; hospitals long-poll ``next_instruction`` and are woken when a round
opens or the federation ends.

An upload is checked completely from its header (session, identity, round, selection, duplicate,
tensor table, size, sample count, metrics) and reserves its hospital's slot *before* a byte of it is
accepted, so no hospital can have two uploads in flight or make the coordinator buffer more than one
model for it. At most ``max_receiving`` uploads are read at once (the others wait, their bytes held
back by gRPC's flow control), so the coordinator's memory stays flat in the number of hospitals:
the global model, the float64 sums (twice the model) and ``max_receiving`` uploads. (Sending the model
is bounded in server/transfers.py.) An upload is folded into the round's accumulator only after it
arrived whole and passed server/admission.py, under a separate lock so that a 45 MB fold never blocks
joins and polls; ``close_round`` takes that lock too, so no fold can land in a closed round. A refused
update changes nothing.

A session ends when its hospital joins again (from another process), or at once when its certificate
is revoked (``revoke``): its polls and downloads are refused from then on and no round waits for it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from medfed.common.compression import DecodedUpdate, IncompatibleUpdate, check_form
from medfed.common.data.folders import DatasetInfo
from medfed.common.limits import HOSPITAL_NAME
from medfed.common.messages import ModelSpec, PrivacyReport, TrainSettings
from medfed.common.peer_text import listed, quoted
from medfed.common.tensors import ALIGNMENT, EncodedModel, Layout, layout_of
from medfed.server.admission import refusal
from medfed.server.errors import (
    CoordinatorError,
    DuplicateUpdate,
    InvalidUpdate,
    PermissionDenied,
    Rejected,
    SessionReplaced,
    TooLarge,
    Unauthenticated,
    UnknownSession,
    UploadInProgress,
)
from medfed.server.strategy import Accumulator, AggregationError

log = logging.getLogger("medfed.server")

DEFAULT_MAX_EXAMPLES = 1_000_000
MAX_CLOSED_SESSIONS = 10_000
"""ended sessions remembered, to tell a caller why (beyond that: 'unknown session')"""


@dataclass(frozen=True)
class Task:
    round: int
    total_rounds: int
    settings: TrainSettings
    model: ModelSpec
    payload: EncodedModel


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Finished:
    reason: str
    rounds_completed: int
    resumable: bool = False


Instruction = Task | Wait | Finished


@dataclass
class Hospital:
    name: str
    session_id: str
    num_examples: int
    told_finished: bool = False
    left: bool = False
    last_seen: float = 0.0
    silent: bool = False
    """taken for gone after --heartbeat-timeout without a call; any call brings it back"""
    classes: tuple[int, ...] = ()
    """the classes in its training data, as it reported them (for the report only)"""
    polls: int = 0
    """polls started; a poll that sees a newer one return at once (one waiting poll per hospital)"""


@dataclass(frozen=True)
class Contribution:
    name: str
    num_examples: int
    metrics: dict[str, float]
    privacy: PrivacyReport | None = None
    nbytes: int = 0
    """the update's size on the wire (its tensor bytes)"""


@dataclass
class _OpenRound:
    task: Task
    selected: set[str]
    accumulator: Accumulator
    min_fit: int
    enough: int | None = None
    """over-selection: the round closes at the first ``enough`` updates"""
    contributions: dict[str, Contribution] = field(default_factory=dict)
    receiving: set[str] = field(default_factory=set)
    bytes_sent: int = 0
    """model bytes handed out to hospitals this round (a hospital that fetches twice counts twice)"""


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    contributions: list[Contribution]
    missing: list[str]
    accumulator: Accumulator
    bytes_sent: int = 0
    bytes_received: int = 0


class PendingUpdate:
    """An upload whose header was accepted: its hospital's slot stays reserved until ``commit`` or exit.

    Entering waits for one of the coordinator's receive slots; leaving frees both."""

    def __init__(
        self, coordinator: Coordinator, current: _OpenRound, contribution: Contribution, layout: Layout
    ) -> None:
        self._coordinator, self._round, self._contribution = coordinator, current, contribution
        self._layout = layout
        self.name = contribution.name

    def commit(self, state: Mapping[str, np.ndarray]) -> None:
        """Fold the received tensors (as the header described them) into the round."""
        decoded = DecodedUpdate(state, self._layout, self._round.task.payload.tensors())
        self._coordinator._fold(self._round, self._contribution, state, decoded)

    def __enter__(self) -> PendingUpdate:
        try:
            self._coordinator._receive_slot(self._round)
        except BaseException:
            self._coordinator._release(self._round, self.name, holds_slot=False)
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._coordinator._release(self._round, self.name)


class Coordinator:
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
    ) -> None:
        if max_receiving < 1:
            raise ValueError(f"max_receiving must be at least 1, got {max_receiving}")
        self._receiving_now = 0
        self._max_receiving = max_receiving
        self._cond = threading.Condition()
        self._fold_lock = threading.Lock()
        self._clock = clock
        self._info = data_info
        self._allowed = allowed
        self._max_examples = max_examples
        self._hospitals: dict[str, Hospital] = {}
        self._sessions: dict[str, str] = {}
        self._closed: dict[str, CoordinatorError] = {}
        """ended session -> what its next call is told (insertion order: the oldest are forgotten first)"""
        self._round: _OpenRound | None = None
        self._finished: Finished | None = None
        self.federation_id = federation_id or secrets.token_hex(8)
        self._heartbeat_timeout = heartbeat_timeout

    # ----- hospital-facing -------------------------------------------------------------------

    def join(self, name: str, num_examples: int, info: DatasetInfo, *, classes: tuple[int, ...] = ()) -> str:
        """Admit a hospital (``name`` is its certificate's common name under TLS); returns its session."""
        if not HOSPITAL_NAME.match(name):
            raise InvalidUpdate(f"hospital name {quoted(name)} must be 1-64 letters, digits, '_', '.' or '-'")
        if self._allowed is not None and name not in self._allowed:
            raise PermissionDenied(f"{name} is not on this federation's --allow list")
        if not 1 <= num_examples <= self._max_examples:
            raise InvalidUpdate(
                f"{name} declares {num_examples} training examples; allowed are 1..{self._max_examples}"
            )
        with self._cond:
            if self._finished is not None:
                raise Rejected(f"the federation is over ({self._finished.reason})")
            if self._info is None:
                self._info = info
                log.info(
                    "%s set the federation's data: %s, classes %s", name, quoted(info.dataset), listed(info.class_names)
                )
            elif reason := self._info.mismatch(info):
                raise Rejected(f"{name} cannot join: its {reason}")
            known = self._info.num_classes
            if len(set(classes)) != len(classes) or any(not 0 <= c < known for c in classes):
                raise InvalidUpdate(f"{name} reports classes {list(classes)[:10]}: expected distinct 0..{known - 1}")
            old = self._hospitals.get(name)
            if old is not None:
                self._close_session(
                    old.session_id,
                    SessionReplaced("this hospital joined again from another process; this session is closed"),
                )
                if not old.left:
                    log.warning("%s joined again; its previous session is closed", name)
            session_id = secrets.token_urlsafe(18)
            self._hospitals[name] = Hospital(
                name, session_id, num_examples, last_seen=self._clock(), classes=tuple(sorted(classes))
            )
            self._sessions[session_id] = name
            current = self._round
            if current is not None and name not in current.selected and len(current.selected) < current.min_fit:
                current.selected.add(name)
                log.info("%s joins round %d, which was short of hospitals", name, current.task.round)
            self._cond.notify_all()
        log.info(
            "%s joined with %d training examples (%d in the federation)", name, num_examples, len(self.hospitals())
        )
        return session_id

    def _close_session(self, session_id: str, error: CoordinatorError) -> None:
        """Caller holds the condition: end a session; its next call (or waiting poll) gets ``error``."""
        self._sessions.pop(session_id, None)
        self._closed[session_id] = error
        while len(self._closed) > MAX_CLOSED_SESSIONS:
            del self._closed[next(iter(self._closed))]
        self._cond.notify_all()

    def _hospital(self, session_id: str, caller: str | None) -> Hospital:
        """Caller holds the condition. ``caller`` is the TLS identity, None without TLS."""
        if (closed := self._closed.get(session_id)) is not None:
            raise closed
        name = self._sessions.get(session_id)
        if name is None:
            raise UnknownSession("unknown session: join first")
        if caller is not None and caller != name:
            raise Unauthenticated(f"this session belongs to another hospital, not {caller}")
        hospital = self._hospitals[name]
        hospital.last_seen = self._clock()
        if hospital.silent:
            hospital.silent = hospital.left = False
            current = self._round
            if current is not None and name not in current.selected and len(current.selected) < current.min_fit:
                current.selected.add(name)  # the round is short of hospitals: it takes this one back at once
            log.info("%s is back after a silence", name)
            self._cond.notify_all()
        return hospital

    def heartbeat(self, session_id: str, *, caller: str | None = None) -> None:
        with self._cond:
            self._hospital(session_id, caller)

    def _drop_silent(self, current: _OpenRound) -> None:
        """Caller holds the condition: stop waiting for chosen hospitals that stopped calling."""
        if self._heartbeat_timeout is None:
            return
        now = self._clock()
        for name in sorted(current.selected - current.contributions.keys() - current.receiving):
            hospital = self._hospitals.get(name)
            if hospital is None or now - hospital.last_seen <= self._heartbeat_timeout:
                continue
            current.selected.discard(name)
            hospital.left = hospital.silent = True
            log.warning(
                "%s has been silent for %.0f s (--heartbeat-timeout): taken for gone; round %d goes on without it%s",
                name, now - hospital.last_seen, current.task.round,
                f" but now has {len(current.selected)} of the {current.min_fit} hospitals it needs (--min-fit)"
                if len(current.selected) < current.min_fit else "",
            )  # fmt: skip

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
                    hospital.told_finished = True
                    self._cond.notify_all()
                    return self._finished
                current = self._round
                if (
                    current is not None
                    and hospital.name in current.selected
                    and hospital.name not in current.contributions
                    and hospital.name not in current.receiving
                ):
                    current.bytes_sent += current.task.payload.layout.total_bytes
                    return current.task
                remaining = deadline - self._clock()
                if remaining <= 0 or not is_active():
                    return Wait("no task for this hospital yet")
                self._cond.wait(remaining)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def name_of(self, session_id: str) -> str | None:
        """The hospital a live session belongs to (None when it ended or never was)."""
        with self._cond:
            return self._sessions.get(session_id)

    def session_error(self, session_id: str) -> CoordinatorError | None:
        """Why a session can no longer be served (revoked, replaced), or None while it is live."""
        with self._cond:
            return self._closed.get(session_id)

    def revoke(self, revoked: Mapping[str, str]) -> None:
        """End these hospitals' sessions now ({name: reason}; their certificates were revoked): their
        waiting polls and downloads are refused, and the open round stops waiting for them."""
        with self._cond:
            current = self._round
            for name, reason in sorted(revoked.items()):
                hospital = self._hospitals.get(name)
                if hospital is None or hospital.session_id not in self._sessions:
                    continue
                hospital.left = True
                self._close_session(hospital.session_id, PermissionDenied(f"{reason}; this session is closed"))
                if current is None or name in current.contributions:
                    log.warning("%s: %s; its session is closed", name, reason)
                    continue
                was_chosen = name in current.selected
                current.selected.discard(name)
                current.receiving.discard(name)
                short = was_chosen and len(current.selected) < current.min_fit
                log.warning(
                    "%s: %s; its session is closed%s%s", name, reason,
                    f" and round {current.task.round} goes on without it" if was_chosen else "",
                    f", but the round now has {len(current.selected)} of the {current.min_fit} hospitals it needs "
                    f"(--min-fit): to go on with fewer, stop the coordinator and continue with --resume --min-fit "
                    f"{max(len(current.selected), 1)} (and --min-clients and --clients-per-round no larger)"
                    if short else "",
                )  # fmt: skip
            self._cond.notify_all()

    def begin_update(
        self,
        session_id: str,
        round_number: int,
        num_examples: int,
        metrics: Mapping[str, float],
        layout: Layout,
        *,
        caller: str | None = None,
        privacy: PrivacyReport | None = None,
        delta: bool = False,
    ) -> PendingUpdate:
        """Check an upload's header and reserve its slot; use the result as a context manager."""
        with self._cond:
            hospital = self._hospital(session_id, caller)
            current = self._check_round(hospital.name, round_number)
            expected = current.task.payload.layout
            try:
                check_form(layout, expected, current.task.settings.update_encoding, delta=delta)
            except IncompatibleUpdate as exc:
                raise InvalidUpdate(str(exc)) from None
            if layout.total_bytes > expected.total_bytes + ALIGNMENT * len(expected.tensors):
                raise TooLarge(f"an update of {layout.total_bytes} bytes is larger than the model needs")
            if not 1 <= num_examples <= hospital.num_examples:
                raise InvalidUpdate(
                    f"num_examples {num_examples} is outside 1..{hospital.num_examples} "
                    f"(the count {hospital.name} joined with)"
                )
            current.receiving.add(hospital.name)
            contribution = Contribution(hospital.name, num_examples, dict(metrics), privacy, layout.total_bytes)
            return PendingUpdate(self, current, contribution, layout)

    def submit_update(
        self,
        session_id: str,
        round_number: int,
        num_examples: int,
        metrics: Mapping[str, float],
        state: Mapping[str, np.ndarray],
        *,
        caller: str | None = None,
    ) -> None:
        """``begin_update`` and ``commit`` in one step, for callers that hold the whole update already."""
        with self.begin_update(session_id, round_number, num_examples, metrics, layout_of(state), caller=caller) as up:
            up.commit(state)

    def _check_round(self, name: str, round_number: int) -> _OpenRound:
        current = self._round
        if current is None or current.task.round != round_number:
            open_now = f"round {current.task.round} is" if current else "no round is open now"
            raise Rejected(f"round {round_number} is not open: {open_now}")
        if name not in current.selected:
            raise PermissionDenied(f"{name} was not chosen for round {round_number}")
        if name in current.contributions:
            raise DuplicateUpdate(f"{name} already sent its update for round {round_number}")
        if name in current.receiving:
            raise UploadInProgress(f"an earlier upload of {name}'s update for round {round_number} is still open")
        return current

    def _fold(
        self,
        current: _OpenRound,
        contribution: Contribution,
        state: Mapping[str, np.ndarray],
        decoded: Mapping[str, np.ndarray],
    ) -> None:
        """``state`` as received, ``decoded`` its full values: checked by server/admission.py, then folded."""
        with self._fold_lock:
            with self._cond:
                if self._round is not current:
                    raise Rejected(f"round {current.task.round} closed while the update was being received")
                if contribution.name not in current.selected:
                    raise PermissionDenied(f"{contribution.name} is no longer part of round {current.task.round}")
            if (reason := refusal(state, decoded, current.task.payload.tensors())) is not None:
                raise InvalidUpdate(reason)
            try:
                current.accumulator.add(decoded, contribution.num_examples)
            except AggregationError as exc:
                raise InvalidUpdate(str(exc)) from None
            with self._cond:
                current.contributions[contribution.name] = contribution
                current.receiving.discard(contribution.name)
                self._cond.notify_all()

    def _receive_slot(self, current: _OpenRound) -> None:
        """Wait for a free receive slot; refuse if the round closes meanwhile (nothing read in vain)."""
        with self._cond:
            while self._receiving_now >= self._max_receiving and self._round is current:
                self._cond.wait()
            if self._round is not current:
                raise Rejected(f"round {current.task.round} closed while the update waited to be received")
            self._receiving_now += 1

    def _release(self, current: _OpenRound, name: str, *, holds_slot: bool = True) -> None:
        with self._cond:
            current.receiving.discard(name)
            if holds_slot:
                self._receiving_now -= 1
            self._cond.notify_all()

    def leave(self, session_id: str, *, caller: str | None = None, reason: str = "") -> None:
        with self._cond:
            hospital = self._hospital(session_id, caller)
            hospital.left = True
            current = self._round
            if current is not None and hospital.name not in current.contributions:
                current.selected.discard(hospital.name)
                if len(current.selected) < current.min_fit:
                    log.warning(
                        "%s left; round %d now has %d of the %d hospitals it needs (--min-fit): "
                        "the next hospital to join takes part in it",
                        hospital.name, current.task.round, len(current.selected), current.min_fit,
                    )  # fmt: skip
            self._cond.notify_all()
        log.info("%s left the federation%s", hospital.name, f": {reason}" if reason else "")

    # ----- driver-facing ---------------------------------------------------------------------

    @property
    def data_info(self) -> DatasetInfo | None:
        with self._cond:
            return self._info

    def hospital_classes(self) -> dict[str, tuple[int, ...]]:
        """What each hospital that ever joined reported of its classes (empty tuples left out)."""
        with self._cond:
            return {h.name: h.classes for h in self._hospitals.values() if h.classes}

    def hospitals(self) -> list[str]:
        with self._cond:
            return sorted(h.name for h in self._hospitals.values() if not h.left)

    def wait_for_hospitals(self, count: int, timeout: float) -> list[str]:
        """Wait until ``count`` hospitals have joined (or timeout / finish); returns who is there."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._finished is None:
                present = [h for h in self._hospitals.values() if not h.left]
                remaining = deadline - self._clock()
                if len(present) >= count or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return sorted(h.name for h in self._hospitals.values() if not h.left)

    def open_round(
        self, task: Task, selected: list[str], accumulator: Accumulator, min_fit: int = 1, enough: int | None = None
    ) -> None:
        """Start a round for ``selected``; it needs ``min_fit`` updates to be aggregated and, with
        ``enough``, closes as soon as that many have arrived (the others' updates are then refused)."""
        with self._cond:
            self._round = _OpenRound(task, set(selected), accumulator, min_fit, enough)
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
                waiting = current.selected - current.contributions.keys()
                complete = not waiting and len(current.contributions) >= current.min_fit
                if current.enough is not None and len(current.contributions) >= current.enough:
                    complete = True
                remaining = deadline - self._clock()
                if complete or remaining <= 0:
                    break
                self._cond.wait(min(remaining, self._heartbeat_timeout / 4) if self._heartbeat_timeout else remaining)
            return self._outcome(current)

    def close_round(self) -> RoundOutcome:
        with self._fold_lock, self._cond:
            current = self._round
            if current is None:
                raise RuntimeError("no round is open")
            self._round = None
            self._cond.notify_all()
            return self._outcome(current)

    @staticmethod
    def _outcome(current: _OpenRound) -> RoundOutcome:
        contributions = [current.contributions[n] for n in sorted(current.contributions)]
        missing = sorted(current.selected - current.contributions.keys())
        received = sum(c.nbytes for c in contributions)
        return RoundOutcome(
            current.task.round, contributions, missing, current.accumulator, current.bytes_sent, received
        )

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
                untold = sorted(h.name for h in self._hospitals.values() if not h.left and not h.told_finished)
                remaining = deadline - self._clock()
                if not untold or remaining <= 0:
                    return untold
                self._cond.wait(remaining)
