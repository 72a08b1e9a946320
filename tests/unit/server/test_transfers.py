"""Send slots (one per hospital, a bounded number in all) and the stall watch, driven directly."""

import threading
import time

from medfed.server.transfers import SendSlots, TransferWatch
from tests.helpers import wait_until


class Cancelled:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_hospitals_beyond_the_send_slots_wait_for_a_free_one() -> None:
    slots = SendSlots(1)
    first = slots.acquire("hospital_a", Cancelled(), lambda: True)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire("hospital_b", Cancelled(), lambda: True)))

    waiter.start()
    waiter.join(timeout=0.3)
    blocked_while_the_first_is_sent = waiter.is_alive()
    assert first is not None
    first.release()
    waiter.join(timeout=30)

    assert blocked_while_the_first_is_sent and got[0] is not None and slots.held == 1


def test_a_hospital_holds_one_slot_however_many_streams_it_opens() -> None:
    slots = SendSlots(2)
    cancels = [Cancelled() for _ in range(3)]
    held = [slots.acquire("hostile", cancel, lambda: True) for cancel in cancels]

    honest = slots.acquire("honest", Cancelled(), lambda: True)  # would wait forever if hostile held both

    assert all(slot is not None for slot in held) and honest is not None
    assert [c.calls for c in cancels] == [1, 1, 0]  # each newer stream cancelled the one before it
    assert slots.held == 2
    held[0].release()  # a displaced stream ending late frees nothing of its successor's
    assert slots.held == 2
    held[2].release()
    assert slots.held == 1


def test_a_waiter_gives_up_when_its_caller_hangs_up_the_run_ends_or_a_newer_stream_of_it_asks() -> None:
    slots = SendSlots(1)
    assert slots.acquire("hospital_a", Cancelled(), lambda: True) is not None
    connected = threading.Event()
    connected.set()
    got: list[object] = []
    hung_up = threading.Thread(target=lambda: got.append(slots.acquire("hospital_b", Cancelled(), connected.is_set)))
    hung_up.start()
    connected.clear()
    slots.wake()  # what the servicer's RPC-termination callback does
    hung_up.join(timeout=30)

    older: list[object] = []
    waiting = threading.Thread(target=lambda: older.append(slots.acquire("hospital_c", Cancelled(), lambda: True)))
    waiting.start()
    newer_result: list[object] = []
    newer = threading.Thread(
        target=lambda: newer_result.append(slots.acquire("hospital_c", Cancelled(), lambda: False))
    )
    newer.start()
    waiting.join(timeout=30)
    newer.join(timeout=30)

    assert got == [None] and older == [None] and newer_result == [None]
    assert not hung_up.is_alive() and not waiting.is_alive()


def test_a_transfer_that_stalls_is_cancelled_and_one_that_moves_is_not() -> None:
    now = [0.0]
    watch = TransferWatch(10.0, clock=lambda: now[0], autostart=False)
    stalled, moving, waiting = Cancelled(), Cancelled(), Cancelled()
    with (
        watch.watch("a stalled download", stalled) as a,
        watch.watch("a moving download", moving) as b,
        watch.watch("an upload waiting for a slot", waiting),
    ):
        a.progress()
        b.progress()
        for _ in range(5):
            now[0] += 4.0
            b.progress()
            watch.check()

    assert (stalled.calls, moving.calls, waiting.calls) == (1, 0, 0)  # not armed before its first progress


def test_a_transfer_past_its_deadline_is_cancelled_even_while_it_moves() -> None:
    now = [0.0]
    watch = TransferWatch(10.0, clock=lambda: now[0], autostart=False)
    cancel = Cancelled()
    with watch.watch("a slow upload", cancel, timeout=30.0) as ticket:
        for _ in range(10):
            now[0] += 5.0
            ticket.progress()
            watch.check()

    assert cancel.calls == 1


def test_of_the_streams_waiting_for_a_slot_only_the_first_in_line_asks() -> None:
    """A hundred waiting hospitals each asking four times a second took the CPU the streams under way
    needed (bench/many_hospitals.py, 100 hospitals on loopback): the others wait to be woken."""
    looks: dict[int, int] = {}  # clock reads by thread: one when a stream arrives, one more per ask

    def clock() -> float:
        looks[threading.get_ident()] = looks.get(threading.get_ident(), 0) + 1
        return time.monotonic()

    slots = SendSlots(16, base=1, probe_s=0.001, clock=clock)
    held = slots.acquire("hospital_a", Cancelled(), lambda: True)
    running = threading.Event()
    running.set()
    waiters = [
        threading.Thread(target=slots.acquire, args=(f"hospital_{i}", Cancelled(), running.is_set)) for i in range(5)
    ]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: sum(looks.values()) >= 300, 30, lambda: f"{sum(looks.values())} clock reads")
    askers = [ident for ident, n in looks.items() if n > 1 and ident != threading.get_ident()]
    running.clear()
    slots.wake()
    for waiter in waiters:
        waiter.join(timeout=30)
    assert held is not None and len(askers) == 1, f"{len(askers)} waiting streams asked for a slot"
