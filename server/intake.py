"""Which uploads may stream now, and whether each is received into memory or into a file.

An upload holds a receive slot from its admission until it is folded; a hospital sends its bytes only once
admitted (the Upload call's ``admitted`` reply), so a waiting hospital costs the coordinator its header
and nothing more. Admitted uploads are received into memory, which is fastest, up to ``in_memory`` times
the model's bytes at once (two lossless updates, or eight int8 ones).
Further uploads are admitted, into files (server/spool.py), only while every upload under way is held
back by its hospital's link: it comes in slower than ``slow_bps`` and no faster than it did the probe
before. An upload whose rate still grows is held back by its flow-control window, which gRPC widens
round trip by round trip towards the link's bandwidth-delay product (a fast, long link); one faster
than ``slow_bps`` by the coordinator itself. Neither leaves room for more.

Why not a fixed number: on hospital links of 100 Mbit/s an upload of ResNet-18 takes 3.6 s, and two at a
time leave the other hospitals' links idle for most of the round (ten hospitals: 18 s of uploads instead
of 3.6 s). On fast links two uploads already bring in as much as the coordinator can take, and every
further one only fills its flow-control window (tens of MB on a fast, long link) in the coordinator's
memory: measured, ten hospitals 50 ms away with 16 uploads admitted at once took the coordinator to
661 MB, with two to 409 MB. Rates are measured over ``probe_s`` from an upload's first bytes, and an
upload measured fewer than twice holds further admissions back; when every upload under way is
link-bound, up to three times as many again may be admitted (two, then eight, then up to the cap).

And whatever the rates say, a stream beyond the ones always allowed (uploads here, downloads in
server/transfers.py) is let in only if the coordinator's resident memory plus ``EXTRA_ALLOWANCE`` for it
and for each such stream already under way stays below its bound of 300 MB + 4 x the model
(``Headroom``), and only while the coordinator's own threads are not kept waiting for a CPU (over the
last ``probe_s``, less than ``STARVED`` of a thread's time on a run queue, summed over its threads) and
it uses less than ``BUSY`` of a core. A coordinator short of CPU, as on a machine whose cores fifty
hospitals share in this project's benchmarks, or one whose Python threads keep its interpreter lock
busy, reads its streams slowly and steadily, which looks like slow links; a further stream then takes
CPU from the others, and gRPC, which receives at the link's rate into a window sized by the link (up
to the whole update on a fast link), holds what the coordinator has not read yet in memory: measured,
six such uploads of ResNet-18 50 ms away took the coordinator to 646 MB.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from medfed.server.memory import rss_bytes, run_queue_wait_ns

IN_MEMORY_UPLOADS = 2
"""uploads received into memory at once (each holds one update until it is folded)"""
SLOW_UPLOAD_BPS = 20e6
"""an upload faster than this (160 Mbit/s) is not taken to be held back by its hospital's link"""
STARVED = 0.25
"""share of a thread's time its threads may together spend waiting for a CPU before it counts as short of CPU"""
BUSY = 0.8
"""share of one core the coordinator may use before it counts as short of CPU: its Python threads share
one interpreter lock, so a coordinator near one core reads every stream more slowly as streams are added"""
STALE = 4
"""a CPU look older than this many probes measures nothing about now"""
EXTRA_ALLOWANCE = 8 << 20
"""memory set aside for each stream beyond the ones always allowed: gRPC's least window (4 MiB), doubled"""
GROWING = 1.25
"""an upload whose rate rose by more than this factor over its last probe is still widening its window"""
PROBE_S = 0.25
"""how long an upload's rate is measured over before it counts for further admissions"""


class Headroom:
    """The coordinator's memory left for streams beyond the ones it always allows, uploads and downloads
    together. Thread-safe."""

    def __init__(
        self,
        resident: Callable[[], int | None] = rss_bytes,
        allowance: int = EXTRA_ALLOWANCE,
        *,
        waited: Callable[[], int | None] = run_queue_wait_ns,
        used: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``waited``: nanoseconds the process's threads have waited for a CPU (None: cannot tell, and
        the CPU is then not looked at); ``used``: CPU seconds the process has used."""
        self._resident, self._allowance, self._clock = resident, allowance, clock
        self._waited, self._used = waited, used
        self._lock = threading.Lock()
        self._cpu_mark: tuple[float, int, float] | None = None
        self._starved = self._busy = True
        """until measured: a coordinator just woken by a crowd of hospitals may well be short of CPU"""
        self.bound: int | None = None
        """resident bytes the coordinator must stay under (None: no limit, before the first round)"""
        self.extras = 0

    def short_of_cpu(self, *, waiting_counts: bool = True) -> bool:
        """Caller holds the lock: over the last probe, did the process use more than ``BUSY`` of a core,
        or (``waiting_counts``) did its threads wait for a CPU more than ``STARVED`` of the time?
        Unknown counts as short."""
        now = self._clock()
        if self._cpu_mark is None or now - self._cpu_mark[0] >= PROBE_S:  # /proc is not free: once a probe
            if (waited := self._waited()) is None:
                return False
            used = self._used()
            if self._cpu_mark is not None and now - self._cpu_mark[0] <= STALE * PROBE_S:
                since, waited_before, used_before = self._cpu_mark
                self._starved = (waited - waited_before) / 1e9 > STARVED * (now - since)
                self._busy = used - used_before > BUSY * (now - since)
            else:
                self._starved = self._busy = True  # nothing measured lately: look again next probe
            self._cpu_mark = (now, waited, used)
        return self._busy or (waiting_counts and self._starved)

    def take(self, *, waiting_counts: bool = True) -> bool:
        """Room for one more extra stream? If so it counts from now until ``give_back``. ``waiting_counts``:
        whether the coordinator's threads waiting for a CPU rules it out (see ``short_of_cpu``)."""
        with self._lock:
            if self.bound is not None and (self._resident() or 0) + (self.extras + 1) * self._allowance >= self.bound:
                return False
            if self.short_of_cpu(waiting_counts=waiting_counts):
                return False
            self.extras += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.extras -= 1


class WaitingLine:
    """Streams waiting for a slot, first come, first served; used under the caller's condition. Only the
    first in line asks for a slot: a hundred hospitals each asking four times a second took the CPU the
    transfers under way needed (bench/many_hospitals.py, 100 hospitals on loopback)."""

    def __init__(self) -> None:
        self._places: deque[object] = deque()

    def join(self, place: object) -> None:
        self._places.append(place)

    def first(self, place: object) -> bool:
        return self._places[0] is place

    def leave(self, place: object, cond: threading.Condition) -> None:
        """Out of the line (served or given up); the next in line is woken to ask now."""
        was_first = self.first(place)
        self._places.remove(place)
        if was_first:
            cond.notify_all()


@dataclass(eq=False)
class Flow:
    """One transfer's bytes over time: enough to tell whether its hospital's link holds it back."""

    started_at: float
    moved: int = field(default=0)
    """bytes moved so far (the transferring thread adds to them with ``arrived``)"""
    round_trip: float | None = None
    """seconds from its start to its first bytes: about one round trip to the hospital"""
    rate: float | None = None
    """bytes per second over its last measured ``probe_s``, None until then"""
    previous_rate: float | None = None
    """the rate measured the probe before"""
    mark: tuple[float, int] = (0.0, 0)
    """(time, moved) when its rate was last measured, or when its first bytes came"""

    def arrived(self, nbytes: int, now: float) -> None:
        if self.round_trip is None:
            self.round_trip, self.mark = now - self.started_at, (now, 0)
        self.moved += nbytes

    def measure(self, now: float, probe_s: float) -> None:
        if self.round_trip is None:
            return  # no byte yet
        since, moved = self.mark
        if now - since >= probe_s and now > since:
            self.previous_rate, self.rate = self.rate, (self.moved - moved) / (now - since)
            self.mark = (now, self.moved)

    def link_bound(self, slow_bps: float) -> bool:
        """Slow and steady: held back by the hospital's link, not by its window or the coordinator."""
        if self.rate is None or self.previous_rate is None:
            return False
        return self.rate < slow_bps and self.rate <= GROWING * self.previous_rate


@dataclass(eq=False)
class Admission(Flow):
    """One admitted upload: where it is received, and how much of it has arrived."""

    in_memory: bool = True
    nbytes: int = 0


class Intake:
    """Not thread-safe: the coordinator calls it under its condition."""

    def __init__(
        self,
        max_uploads: int,
        in_memory: int = IN_MEMORY_UPLOADS,
        *,
        slow_bps: float = SLOW_UPLOAD_BPS,
        probe_s: float = PROBE_S,
        clock: Callable[[], float] = time.monotonic,
        links_are_slow: Callable[[list[Admission]], bool] | None = None,
        headroom: Headroom | None = None,
    ) -> None:
        """``links_are_slow``: whether the uploads under way leave room for more (default: every one of them
        is link-bound by ``slow_bps``)."""
        if max_uploads < 1 or in_memory < 0:
            raise ValueError(f"max_uploads must be at least 1 and in_memory at least 0: {max_uploads}, {in_memory}")
        self.max_uploads, self.in_memory = max_uploads, in_memory
        self._probe_s, self._clock = probe_s, clock
        self.headroom = headroom or Headroom()
        self._links_are_slow = links_are_slow or (lambda admitted: all(a.link_bound(slow_bps) for a in admitted))
        self._admitted: list[Admission] = []
        self._extra_allowed = 0
        """extra admissions left from the last time every upload under way was measured slow"""
        self.model_bytes: int | None = None
        """bytes of the round's model (set as each round opens): memory takes uploads up to ``in_memory``
        times as many bytes (None: ``in_memory`` uploads, whatever their size)"""
        self.memory_bytes = 0
        """bytes of uploads being received into memory now"""
        self.memory_bytes_peak = 0

    @property
    def receiving(self) -> int:
        return len(self._admitted)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def _measure(self, now: float) -> None:
        for a in self._admitted:
            a.measure(now, self._probe_s)

    def admit(self, nbytes: int) -> Admission | None:
        """An admission for an upload of ``nbytes``, or None: wait (``retry_in``) and ask again."""
        now = self._clock()
        self._measure(now)
        if self.receiving >= self.max_uploads:
            return None
        if self.model_bytes is None:
            in_memory = sum(a.in_memory for a in self._admitted) < self.in_memory
        else:  # a budget in bytes: four int8 updates take the room of one lossless one
            in_memory = self.memory_bytes == 0 or self.memory_bytes + nbytes <= self.in_memory * self.model_bytes
        if not in_memory:
            if self._extra_allowed == 0:
                if not self._links_are_slow(self._admitted):
                    return None  # the window or the coordinator sets the pace: another would only wait in memory
                self._extra_allowed = 3 * self.receiving  # all link-bound: up to three times as many again
            if not self.headroom.take():
                return None  # no room: memory is what the extra uploads' windows would take
            self._extra_allowed -= 1
        admission = Admission(now, in_memory=in_memory, nbytes=nbytes)
        self._admitted.append(admission)
        if in_memory:
            self.memory_bytes += nbytes
            self.memory_bytes_peak = max(self.memory_bytes_peak, self.memory_bytes)
        return admission

    def retry_in(self) -> float | None:
        """How long a refused upload should wait before asking again (None: until an upload ends)."""
        return None if self.receiving >= self.max_uploads else self._probe_s

    def release(self, admission: Admission) -> None:
        self._admitted.remove(admission)
        if admission.in_memory:
            self.memory_bytes -= admission.nbytes
        else:
            self.headroom.give_back()
