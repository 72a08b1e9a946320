"""The coordinator's intake (server/intake.py): two uploads at once into memory, more only while every
upload comes in slower than a slow link, one extra per probe interval, never more than the cap."""

from __future__ import annotations

import pytest

from medfed.server.intake import Admission, Headroom, Intake

MB = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def intake(clock: Clock, max_uploads: int = 16, rss: list[int] | None = None) -> Intake:
    resident = rss if rss is not None else [0]
    return Intake(max_uploads, in_memory=2, slow_bps=30 * MB, probe_s=0.25, clock=clock,
                  headroom=Headroom(lambda: resident[0], waited=lambda: None))  # fmt: skip


def stream(admissions: list[Admission | None], clock: Clock, rate: float, seconds: float = 0.25,
           round_trip: float = 0.05) -> None:  # fmt: skip
    """Each admission's bytes for ``seconds`` at ``rate``; one not started yet starts ``round_trip`` from now."""
    fresh = [a for a in admissions if a is not None and a.round_trip is None]
    if fresh:
        clock.now += round_trip
        for a in fresh:
            a.arrived(0, clock.now)
    clock.now += seconds
    for a in admissions:
        assert a is not None
        a.arrived(int(rate * seconds), clock.now)


def test_two_uploads_are_admitted_into_memory_at_once_and_counted() -> None:
    clock = Clock()
    gate = intake(clock)

    first, second = gate.admit(45 * MB), gate.admit(45 * MB)

    assert first is not None and second is not None and first.in_memory and second.in_memory
    assert gate.memory_bytes == gate.memory_bytes_peak == 90 * MB
    assert gate.admit(45 * MB) is None  # no rate measured yet: nothing says the links are slow
    gate.release(first)
    assert gate.memory_bytes == 45 * MB and gate.memory_bytes_peak == 90 * MB
    again = gate.admit(45 * MB)
    assert again is not None and again.in_memory  # a freed memory slot is taken at once


def test_steady_uploads_on_slow_links_let_three_times_as_many_again_in_and_into_files() -> None:
    clock = Clock()
    gate = intake(clock)
    admitted = [gate.admit(45 * MB), gate.admit(45 * MB)]
    for expected in (8, 16):
        stream(admitted, clock, 12.5 * MB)  # 100 Mbit/s each: measured once, not yet known to be steady
        assert gate.admit(45 * MB) is None
        stream(admitted, clock, 12.5 * MB)  # measured twice, steady and slow: link-bound
        while (extra := gate.admit(45 * MB)) is not None:
            assert not extra.in_memory
            admitted.append(extra)
        assert gate.receiving == expected
    assert gate.memory_bytes == 90 * MB and gate.admit(45 * MB) is None  # and never beyond the cap


def test_uploads_at_the_coordinators_pace_or_widening_their_windows_keep_the_others_waiting() -> None:
    clock = Clock()
    gate = intake(clock)
    admitted = [gate.admit(45 * MB), gate.admit(45 * MB)]
    for _ in range(8):  # the coordinator takes in 160 MB/s across the two: fast, whatever the link
        stream(admitted, clock, 80 * MB)
        assert gate.admit(45 * MB) is None
    clock, rate = Clock(), 4 * MB / 0.2  # a 4 MiB window 200 ms away, doubling every probe: still widening
    gate = intake(clock)
    admitted = [gate.admit(45 * MB), gate.admit(45 * MB)]
    for _ in range(3):
        stream(admitted, clock, rate, round_trip=0.2)
        assert gate.admit(45 * MB) is None
        rate *= 2
    assert gate.receiving == 2 and gate.retry_in() == pytest.approx(0.25)


def test_no_upload_beyond_the_in_memory_ones_without_room_for_its_window_under_the_memory_bound() -> None:
    clock, rss = Clock(), [400 * MB]
    gate = intake(clock, rss=rss)
    gate.headroom.bound = 479 * MB  # 300 MB + 4 x ResNet-18
    admitted = [gate.admit(45 * MB), gate.admit(45 * MB)]
    stream(admitted, clock, 12.5 * MB)
    assert gate.admit(45 * MB) is None  # measured once
    stream(admitted, clock, 12.5 * MB)  # twice, slow and steady: link-bound
    rss[0] = 475 * MB  # but a starved coordinator's buffers already hold its memory near the bound
    assert gate.admit(45 * MB) is None
    rss[0] = 420 * MB
    extra = gate.admit(45 * MB)
    assert extra is not None and gate.headroom.extras == 1
    gate.release(extra)
    assert gate.headroom.extras == 0


def test_never_more_than_the_cap_and_then_wait_for_a_release() -> None:
    clock = Clock()
    gate = intake(clock, max_uploads=1)
    only = gate.admit(10)
    assert only is not None
    clock.now += 10
    assert gate.admit(10) is None and gate.retry_in() is None
    gate.release(only)
    assert gate.admit(10) is not None


def test_an_impossible_intake_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Intake(0)


def test_a_coordinator_whose_threads_wait_for_a_cpu_takes_no_extra_upload() -> None:
    clock, waited = Clock(), [0]
    headroom = Headroom(lambda: 0, waited=lambda: waited[0], used=lambda: 0.0, clock=clock)
    headroom.bound = 479 * MB
    assert not headroom.take()  # nothing measured yet
    clock.now += 1.0
    waited[0] += int(0.6e9)  # its threads spent 0.6 s of the last second waiting on a run queue
    assert not headroom.take()
    assert headroom.take(waiting_counts=False)  # a download sends what is in memory already
    clock.now += 1.0
    waited[0] += int(0.05e9)  # then hardly any
    assert headroom.take() and headroom.take() and headroom.extras == 3
    clock.now += 5.0  # a look long ago says nothing about now: look again
    assert not headroom.take()


def test_a_coordinator_near_a_core_of_cpu_takes_no_extra_stream() -> None:
    """Its Python threads share one interpreter lock: near one core, every stream added slows the others,
    and each then looks like a slow link while gRPC holds what it has not read yet (646 MB measured)."""
    clock, used = Clock(), [0.0]
    headroom = Headroom(lambda: 0, waited=lambda: 0, used=lambda: used[0], clock=clock)
    headroom.bound = 479 * MB
    assert not headroom.take(waiting_counts=False)  # nothing measured yet
    clock.now, used[0] = clock.now + 1.0, used[0] + 0.9
    assert not headroom.take(waiting_counts=False)
    clock.now, used[0] = clock.now + 1.0, used[0] + 0.3
    assert headroom.take(waiting_counts=False) and headroom.extras == 1


def test_memory_takes_uploads_by_their_bytes_so_int8_updates_come_in_four_times_as_many_at_once() -> None:
    clock = Clock()
    gate = intake(clock)
    gate.model_bytes = 44 * MB

    int8 = [gate.admit(11 * MB) for _ in range(8)]

    assert all(a is not None and a.in_memory for a in int8) and gate.memory_bytes == 88 * MB
    assert gate.admit(11 * MB) is None  # no rate measured yet: nothing says the links are slow
    gate.release(int8[0])
    lossless = gate.admit(44 * MB)
    assert lossless is None  # 77 + 44 MB would pass two models' bytes
    alone = intake(clock)
    alone.model_bytes = 44 * MB
    larger = alone.admit(50 * MB)
    assert larger is not None and larger.in_memory  # the first is always taken, whatever its size
