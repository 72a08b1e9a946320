"""Bounds on the coordinator's model transfers, so that no hospital can stall the others.

Send slots: ``base`` hospitals are streamed the model at once, and up to ``limit`` while every stream
under way is held back by its hospital's link (slow and steady, as server/intake.py tells uploads) and
``headroom`` (server/intake.py) says the coordinator's memory allows: each stream holds a chunk or two plus whatever the
receiver's flow-control window lets gRPC queue, which adds up over many fast hospitals (50 of them on
loopback took the coordinator from 366 to 545 MB with 16 at once), while ten hospitals on 100 Mbit/s
links left waiting by four slots would spend a round's download each idle. Each hospital holds at most
one slot: a newer stream of the same hospital (a retry after a cut connection, or a hostile hospital
opening many) takes over its slot and the older stream is cancelled. Without that, one hospital that
opened several streams and never read them held every slot, and no other hospital could fetch the model.

Stall watch: a transfer that makes no progress for ``stall_timeout`` seconds (a hospital that stops
reading the model, or stops sending its update) or outlives its deadline is cancelled, which frees its
slot. No gRPC here: the servicer passes each stream's ``cancel``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from medfed.server.intake import PROBE_S, SLOW_UPLOAD_BPS, Flow, Headroom, WaitingLine

log = logging.getLogger("medfed.server")

WAIT_STEP_S = 1.0
"""how often a stream waiting for a slot looks again whether its caller or the run went away"""


@dataclass(eq=False)
class _Holder:
    cancel: Callable[[], object]
    flow: Flow
    extra: bool = False
    """one beyond ``base``: counted in the headroom"""


class SendSlot:
    """A held slot; leave the ``with`` block (or call ``release``) to free it. Idempotent."""

    def __init__(self, slots: SendSlots, hospital: str, holder: _Holder) -> None:
        self._slots, self._hospital, self._holder = slots, hospital, holder

    def sent(self, nbytes: int) -> None:
        """``nbytes`` more went out on this stream."""
        self._holder.flow.arrived(nbytes, self._slots.clock())

    def release(self) -> None:
        self._slots._release(self._hospital, self._holder)

    def __enter__(self) -> SendSlot:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


BASE_SENDING = 4
"""streams sent at once whatever the links"""


class SendSlots:
    def __init__(
        self,
        limit: int,
        base: int = BASE_SENDING,
        *,
        headroom: Headroom | None = None,
        slow_bps: float = SLOW_UPLOAD_BPS,
        probe_s: float = PROBE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"the send slot limit must be at least 1, got {limit}")
        self._limit, self._base = limit, min(base, limit)
        self._headroom = headroom or Headroom(lambda: 0, waited=lambda: None)
        self._slow_bps, self._probe_s, self.clock = slow_bps, probe_s, clock
        self._extra_allowed = 0
        self._cond = threading.Condition()
        self._holders: dict[str, _Holder] = {}
        self._newest: dict[str, _Holder] = {}
        """the latest stream of each hospital that asked; an older one still waiting gives up"""
        self._line = WaitingLine()

    def acquire(self, hospital: str, cancel: Callable[[], object], keep_waiting: Callable[[], bool]) -> SendSlot | None:
        """A slot for ``hospital``'s new stream, taken over from its older stream if it holds one; None
        when ``keep_waiting`` turned false (the caller hung up, the run ended) or a newer stream of the
        same hospital asked meanwhile."""
        mine = _Holder(cancel, Flow(self.clock()))
        displaced: _Holder | None = None
        with self._cond:
            self._newest[hospital] = mine
            self._line.join(mine)
            try:
                while True:
                    if self._newest.get(hospital) is not mine or not keep_waiting():
                        if self._newest.get(hospital) is mine:
                            del self._newest[hospital]
                        return None
                    if hospital in self._holders:  # its older stream: cancelled, the slot passes on
                        displaced = self._holders[hospital]
                        break
                    if not self._line.first(mine):
                        self._cond.wait(WAIT_STEP_S)  # only the first in line asks for a slot
                        continue
                    if len(self._holders) < self._base:
                        break
                    if self._one_more():
                        mine.extra = True
                        break
                    self._cond.wait(self._probe_s if len(self._holders) < self._limit else WAIT_STEP_S)
            finally:
                self._line.leave(mine, self._cond)
            mine.flow.started_at = self.clock()
            self._holders[hospital] = mine
            del self._newest[hospital]
        if displaced is not None:
            log.info("%s asked for the model again: its earlier download is cancelled", hospital)
            displaced.cancel()  # outside the lock: gRPC may run callbacks
        return SendSlot(self, hospital, mine)

    def _one_more(self) -> bool:
        """Caller holds the condition: may a stream beyond ``base`` start now?"""
        if len(self._holders) >= self._limit:
            return False
        now = self.clock()
        for holder in self._holders.values():
            holder.flow.measure(now, self._probe_s)
        if self._extra_allowed == 0:
            if not all(h.flow.link_bound(self._slow_bps) for h in self._holders.values()):
                return False
            self._extra_allowed = 3 * len(self._holders)  # all link-bound: up to three times as many again
        if not self._headroom.take(waiting_counts=False):  # what it sends is the model's, already in memory
            return False
        self._extra_allowed -= 1
        return True

    def _release(self, hospital: str, holder: _Holder) -> None:
        with self._cond:
            if self._holders.get(hospital) is holder:
                del self._holders[hospital]
                if holder.extra:
                    self._headroom.give_back()
                self._cond.notify_all()

    def wake(self) -> None:
        """Let waiting streams look at ``keep_waiting`` again now (a call ended, the run finished)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._holders)


@dataclass(eq=False)
class _Watched:
    what: str
    cancel: Callable[[], object]
    deadline: float | None
    last: float | None = None
    """time of the last progress; None until the transfer is armed (stalls before that do not count)"""
    id: int = field(default_factory=itertools.count().__next__)


class Ticket:
    """One watched transfer: ``progress()`` after each piece moved (the first call arms the stall
    check); leave the ``with`` block when it is over."""

    def __init__(self, watch: TransferWatch, watched: _Watched) -> None:
        self._watch, self._watched = watch, watched

    def progress(self) -> None:
        self._watched.last = self._watch.clock()

    def describe(self, what: str) -> None:
        """Name the transfer for the log line, once it is known whose it is."""
        self._watched.what = what

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._watch._forget(self._watched)


class TransferWatch:
    """Cancels watched transfers that stall for ``stall_timeout`` seconds or pass their deadline; one
    thread for all of them, started with the first."""

    def __init__(
        self, stall_timeout: float, clock: Callable[[], float] = time.monotonic, *, autostart: bool = True
    ) -> None:
        """``autostart``: run ``check`` in a thread of its own (tests drive ``check`` with their clock)."""
        if stall_timeout <= 0:
            raise ValueError(f"the stall timeout must be positive, got {stall_timeout}")
        self.stall_timeout = stall_timeout
        self.clock = clock
        self._autostart = autostart
        self._lock = threading.Lock()
        self._active: dict[int, _Watched] = {}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def watch(self, what: str, cancel: Callable[[], object], *, timeout: float | None = None) -> Ticket:
        """Watch a transfer described by ``what`` (for the log line), cancelled with ``cancel``."""
        deadline = self.clock() + timeout if timeout is not None else None
        watched = _Watched(what, cancel, deadline)
        with self._lock:
            self._active[watched.id] = watched
            if self._thread is None and self._autostart:
                self._thread = threading.Thread(target=self._run, name="transfer-watch", daemon=True)
                self._thread.start()
        return Ticket(self, watched)

    def _forget(self, watched: _Watched) -> None:
        with self._lock:
            self._active.pop(watched.id, None)

    def _run(self) -> None:
        step = min(1.0, self.stall_timeout / 4)
        while not self._closed.wait(step):
            self.check()

    def check(self) -> int:
        """Cancel every overdue transfer now; returns how many."""
        now = self.clock()
        with self._lock:
            due = [w for w in self._active.values() if self._overdue(w, now)]
            for w in due:
                del self._active[w.id]
        for w in due:
            stalled = w.last is not None and now - w.last > self.stall_timeout
            why = (
                f"made no progress for {self.stall_timeout:g} s (--stall-timeout)"
                if stalled
                else "passed its deadline (--round-timeout)"
            )
            log.warning("%s %s: cancelled, its slot freed", w.what, why)
            w.cancel()
        return len(due)

    def _overdue(self, w: _Watched, now: float) -> bool:
        return (w.last is not None and now - w.last > self.stall_timeout) or (
            w.deadline is not None and now > w.deadline
        )

    def close(self) -> None:
        self._closed.set()
