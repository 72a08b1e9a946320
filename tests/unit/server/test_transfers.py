"""Send slots (one per hospital, a bounded number in all) and the stall watch, driven directly."""

import threading

from medfed.server.transfers import SendSlots, TransferWatch


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
