"""What the federation is doing now, kept for the dashboard and the metrics: told by the coordinator,
the servicer and the driver as things happen, read as one consistent ``Status`` snapshot.

It has its own lock and never calls back, so telling it something cannot block or reorder the
federation. Everything it keeps is bounded: the event log holds the last ``max_events`` events (a
refusal repeated by the same peer is counted on its last event rather than added again), and at most
MAX_HOSPITALS hospitals are tracked. Peer text reaches it already cut and escaped
(medfed.common.peer_text); the page shows it as text, never as markup.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime

from medfed.common.peer_text import cleaned
from medfed.server.history import RoundRecord
from medfed.server.live.status import Event, HospitalState, HospitalView, Phase, RoundPoint, Status

MAX_EVENTS = 500
MAX_HOSPITALS = 10_000
MAX_METRICS_SHOWN = 16
_IN_ROUND: frozenset[Phase] = frozenset({"sending", "training", "receiving"})


class Monitor:
    def __init__(self, *, clock: Callable[[], float] = time.time, max_events: int = MAX_EVENTS) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._federation_id = ""
        self._strategy = ""
        self._privacy = "none"
        self._class_names: list[str] = []
        self._total_rounds = 0
        self._round = 0
        self._completed = 0
        self._phase: Phase = "starting"
        self._phase_since = clock()
        self._deadline: float | None = None
        self._hospitals: dict[str, HospitalView] = {}
        self._rounds: list[RoundPoint] = []
        self._confusion: list[list[int]] | None = None
        self._events: deque[Event] = deque(maxlen=max_events)
        self._bytes_down = 0
        self._bytes_up = 0
        self._refusals: dict[str, int] = {}

    # ----- the run ---------------------------------------------------------------------------------

    def configure(self, *, federation_id: str, strategy: str, total_rounds: int, privacy: str) -> None:
        with self._lock:
            self._federation_id, self._strategy, self._privacy = federation_id, strategy, privacy
            self._total_rounds = total_rounds

    def set_total_rounds(self, total: int) -> None:
        with self._lock:
            self._total_rounds = total

    def set_class_names(self, names: Iterable[str]) -> None:
        with self._lock:
            self._class_names = [cleaned(n) for n in names]

    def restore(self, records: Iterable[RoundRecord]) -> None:
        """A resumed run: the curves of the rounds completed before the restart."""
        for record in records:
            self.round_done(record, quiet=True)

    def phase(self, phase: Phase, *, deadline_in: float | None = None) -> None:
        with self._lock:
            self._set_phase(phase)
            self._deadline = None if deadline_in is None else self._clock() + deadline_in

    def round_opened(self, round_number: int, selected: Iterable[str], timeout_s: float) -> None:
        with self._lock:
            self._round = round_number
            self._deadline = self._clock() + timeout_s
            chosen = sorted(selected)
            self._set_phase("training")
            self._derive_round_phase()
        self.event("round", f"round {round_number} opened for {len(chosen)} hospital(s): {', '.join(chosen)}")

    def round_done(self, record: RoundRecord, *, quiet: bool = False) -> None:
        test = record.test
        with self._lock:
            private = {name for name, h in self._hospitals.items() if h.dp}
            validation = {
                name: float(m["val_accuracy"])
                for name, m in record.client_metrics.items()
                if "val_accuracy" in m and name not in private
            }
            epsilon = record.epsilon
            if epsilon is None:
                reported = [h.epsilon for n, h in self._hospitals.items() if n in record.clients and h.epsilon]
                epsilon = max(reported) if reported else None
            point = RoundPoint(
                record.round, record.duration_s, test.accuracy if test else None, test.auc if test else None,
                test.loss if test else None, epsilon, validation, record.failed,
            )  # fmt: skip
            self._rounds = [p for p in self._rounds if p.round < record.round] + [point]
            self._completed = max(self._completed, record.round)
            self._round = max(self._round, record.round)
            if test is not None:
                self._confusion = [list(row) for row in test.confusion_matrix]
        if not quiet:
            verdict = f"FAILED: {record.failed}" if record.failed else f"{record.num_clients} update(s)"
            self.event("round", f"round {record.round} completed in {record.duration_s:.1f} s with {verdict}")

    # ----- hospitals -------------------------------------------------------------------------------

    def joined(self, name: str, num_examples: int, certificate_expires: datetime | None = None) -> None:
        with self._lock:
            hospital = self._hospitals.get(name)
            if hospital is None:
                if len(self._hospitals) >= MAX_HOSPITALS:
                    return
                hospital = self._hospitals[name] = HospitalView(name, joined_at=self._clock())
            hospital.num_examples = num_examples
            if certificate_expires is not None:
                hospital.certificate_expires = certificate_expires.isoformat(timespec="seconds")
            self._move(hospital, "joined", "")
        self.event("join", f"{name} joined with {num_examples} training examples")

    def seen(self, name: str) -> None:
        with self._lock:
            if (hospital := self._hospitals.get(name)) is not None:
                hospital.last_seen = self._clock()
                if hospital.state in ("silent", "refused", "left"):
                    self._move(hospital, "joined", "")

    def downloading(self, name: str) -> None:
        self._set_state(name, "downloading")

    def downloaded(self, name: str, nbytes: int) -> None:
        with self._lock:
            self._bytes_down += nbytes
            if (hospital := self._hospitals.get(name)) is not None:
                hospital.bytes_down += nbytes
                if hospital.state == "downloading":
                    self._move(hospital, "training", "")

    def download_ended(self, name: str) -> None:
        """A download cut short (the hospital hung up, or its session ended)."""
        with self._lock:
            if (hospital := self._hospitals.get(name)) is not None and hospital.state == "downloading":
                self._move(hospital, "joined", "")

    def uploading(self, name: str) -> None:
        self._set_state(name, "uploading")

    def upload_ended(self, name: str) -> None:
        with self._lock:
            if (hospital := self._hospitals.get(name)) is not None and hospital.state == "uploading":
                self._move(hospital, "training", "")

    def reported(self, name: str, nbytes: int, metrics: dict[str, float], epsilon: float | None) -> None:
        with self._lock:
            self._bytes_up += nbytes
            if (hospital := self._hospitals.get(name)) is None:
                return
            hospital.bytes_up += nbytes
            hospital.rounds += 1
            hospital.dp = hospital.dp or epsilon is not None
            hospital.epsilon = epsilon if epsilon is not None else hospital.epsilon
            shown = {} if hospital.dp else dict(sorted(metrics.items())[:MAX_METRICS_SHOWN])
            hospital.metrics = shown
            self._move(hospital, "reported", "")

    def left(self, name: str, reason: str) -> None:
        self._set_state(name, "left", reason)
        self.event("leave", f"{name} left" + (f": {reason}" if reason else ""))

    def silent(self, name: str, seconds: float) -> None:
        self._set_state(name, "silent", f"no call for {seconds:.0f} s")
        self.event("silent", f"{name} has been silent for {seconds:.0f} s and is taken for gone")

    def refused(self, peer: str, what: str, code: str, reason: str) -> None:
        """A call of ``peer`` (a hospital's name, or an address) refused with status ``code``."""
        with self._lock:
            self._refusals[code] = self._refusals.get(code, 0) + 1
            if (hospital := self._hospitals.get(peer)) is not None:
                self._move(hospital, "refused", f"{what}: {code}: {reason}")
        self.event("refused", f"{what} of {peer} refused ({code}): {reason}", coalesce=True)

    def event(self, kind: str, text: str, *, coalesce: bool = False) -> None:
        text = cleaned(text, 400)
        with self._lock:
            recent = itertools.islice(reversed(self._events), 8) if coalesce else ()
            for earlier in recent:
                if earlier.kind == kind and earlier.text == text:
                    earlier.count += 1
                    earlier.time = self._clock()
                    return
            self._events.append(Event(self._clock(), kind, text))

    # ----- reading ---------------------------------------------------------------------------------

    def snapshot(self) -> Status:
        with self._lock:
            return Status(
                federation_id=self._federation_id, strategy=self._strategy, round=self._round,
                total_rounds=self._total_rounds, rounds_completed=self._completed, phase=self._phase,
                phase_since=self._phase_since, deadline=self._deadline, now=self._clock(),
                hospitals=[HospitalView(**vars(h)) for _, h in sorted(self._hospitals.items())],
                rounds=list(self._rounds), confusion_matrix=self._confusion, class_names=list(self._class_names),
                events=[Event(e.time, e.kind, e.text, e.count) for e in self._events], privacy=self._privacy,
                bytes_down=self._bytes_down, bytes_up=self._bytes_up, refusals=dict(self._refusals),
            )  # fmt: skip

    # ----- under the lock --------------------------------------------------------------------------

    def _set_state(self, name: str, state: HospitalState, detail: str = "") -> None:
        with self._lock:
            if (hospital := self._hospitals.get(name)) is not None:
                self._move(hospital, state, detail)

    def _move(self, hospital: HospitalView, state: HospitalState, detail: str) -> None:
        hospital.state, hospital.detail = state, detail
        hospital.last_seen = self._clock()
        if self._phase in _IN_ROUND:
            self._derive_round_phase()

    def _derive_round_phase(self) -> None:
        states = {h.state for h in self._hospitals.values()}
        self._set_phase("sending" if "downloading" in states else "receiving" if "uploading" in states else "training")

    def _set_phase(self, phase: Phase) -> None:
        if phase != self._phase:
            self._phase, self._phase_since = phase, self._clock()
