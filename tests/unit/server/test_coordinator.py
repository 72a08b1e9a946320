"""The round state machine, driven directly: no network, no processes."""

import threading
import time

import numpy as np
import pytest

from medfed.common.data.folders import DatasetInfo
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.tensors import encode, layout_of
from medfed.server.coordinator import Coordinator
from medfed.server.errors import (
    DuplicateUpdate,
    InvalidUpdate,
    PermissionDenied,
    Rejected,
    SessionReplaced,
    UnknownSession,
)
from medfed.server.intake import Intake
from medfed.server.rounds import Finished, Task, Wait
from medfed.server.strategy.fedavg import FedAvg
from tests.helpers import wait_until

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
GLOBAL = {"w": np.zeros(3, dtype=np.float32), "n": np.array(0)}


def open_round(coordinator: Coordinator, number: int, selected: list[str]) -> Task:
    task = Task(number, 5, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(GLOBAL))
    coordinator.open_round(task, selected, FedAvg().begin(GLOBAL))
    return task


def update(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, dtype=np.float32), "n": np.array(2)}


@pytest.fixture
def coordinator() -> Coordinator:
    return Coordinator(data_info=INFO)


def test_a_selected_hospital_gets_the_task_and_others_wait(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    task = open_round(coordinator, 1, ["hospital_a"])

    assert coordinator.next_instruction(a, timeout=0) is task
    assert isinstance(coordinator.next_instruction(b, timeout=0), Wait)


def test_a_waiting_hospital_is_woken_when_the_round_opens(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    got: list[object] = []
    poller = threading.Thread(target=lambda: got.append(coordinator.next_instruction(a, timeout=30)))
    poller.start()

    task = open_round(coordinator, 1, ["hospital_a"])
    poller.join(timeout=30)

    assert got == [task]


def test_updates_are_weighted_and_the_round_closes_when_all_reported(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 30, INFO)
    open_round(coordinator, 1, ["hospital_a", "hospital_b"])

    coordinator.submit_update(a, 1, 10, {"loss": 0.5}, update(1.0))
    coordinator.submit_update(b, 1, 30, {}, update(3.0))
    outcome = coordinator.wait_for_round(deadline=0)
    closed = coordinator.close_round()

    assert outcome.missing == [] and [c.name for c in closed.contributions] == ["hospital_a", "hospital_b"]
    np.testing.assert_allclose(closed.accumulator.result()["w"], np.full(3, 2.5))
    assert closed.contributions[0].metrics == {"loss": 0.5}


def test_stale_duplicate_and_unselected_updates_are_refused(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    open_round(coordinator, 2, ["hospital_a"])

    with pytest.raises(Rejected, match="round 1 is not open: round 2 is"):
        coordinator.submit_update(a, 1, 10, {}, update(1.0))
    with pytest.raises(PermissionDenied, match="not chosen"):
        coordinator.submit_update(b, 2, 10, {}, update(1.0))
    coordinator.submit_update(a, 2, 10, {}, update(1.0))
    with pytest.raises(DuplicateUpdate):
        coordinator.submit_update(a, 2, 10, {}, update(1.0))
    coordinator.close_round()
    with pytest.raises(Rejected, match="round 2 is not open: no round is open"):
        coordinator.begin_update(a, 2, 10, {}, layout_of(GLOBAL))


def test_invalid_updates_are_refused_and_leave_the_aggregate_untouched(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    open_round(coordinator, 1, ["hospital_a"])

    with pytest.raises(InvalidUpdate, match="NaN"):
        coordinator.submit_update(a, 1, 10, {}, update(float("nan")))
    with pytest.raises(InvalidUpdate, match=r"num_examples 11 is outside 1\.\.10"):
        coordinator.submit_update(a, 1, 11, {}, update(1.0))
    with pytest.raises(InvalidUpdate, match=r"tensor 'w' has shape \(4,\), the model's is \(3,\)"):
        coordinator.begin_update(a, 1, 10, {}, layout_of({"w": np.zeros(4, dtype=np.float32), "n": np.array(0)}))
    coordinator.submit_update(a, 1, 10, {}, update(1.0))

    assert coordinator.close_round().accumulator.num_updates == 1


def test_incompatible_data_cannot_join(coordinator: Coordinator) -> None:
    other = INFO.model_copy(update={"class_names": ("a", "b", "c")})

    with pytest.raises(Rejected, match="class_names"):
        coordinator.join("hospital_x", 10, other)
    with pytest.raises(InvalidUpdate, match="name"):
        coordinator.join("../etc", 10, INFO)


def test_rejoining_closes_the_old_session(coordinator: Coordinator) -> None:
    old = coordinator.join("hospital_a", 10, INFO)
    new = coordinator.join("hospital_a", 10, INFO)

    with pytest.raises(SessionReplaced):
        coordinator.next_instruction(old, timeout=0)
    assert isinstance(coordinator.next_instruction(new, timeout=0), Wait)
    with pytest.raises(UnknownSession):
        coordinator.next_instruction("made-up", timeout=0)


def test_a_leaving_hospital_is_not_waited_for(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    open_round(coordinator, 1, ["hospital_a", "hospital_b"])
    coordinator.submit_update(a, 1, 10, {}, update(1.0))

    coordinator.leave(b)

    assert coordinator.wait_for_round(deadline=float("inf")).missing == []
    assert coordinator.hospitals() == ["hospital_a"]


def test_finishing_tells_every_hospital(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)

    coordinator.finish("done", 3)

    assert coordinator.wait_until_told(timeout=0) == ["hospital_a", "hospital_b"]
    assert coordinator.next_instruction(a, timeout=0) == Finished("done", 3)
    assert coordinator.next_instruction(b, timeout=0) == Finished("done", 3)
    assert coordinator.wait_until_told(timeout=0) == []
    with pytest.raises(Rejected, match="over"):
        coordinator.join("hospital_c", 10, INFO)


def test_a_round_left_short_of_min_fit_takes_the_next_hospital_to_join(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    task = Task(1, 5, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(GLOBAL))
    coordinator.open_round(task, ["hospital_a", "hospital_b"], FedAvg().begin(GLOBAL), min_fit=2)

    coordinator.leave(b)
    c = coordinator.join("hospital_c", 10, INFO)

    assert coordinator.next_instruction(c, timeout=0) is task
    coordinator.submit_update(a, 1, 10, {}, update(1.0))
    coordinator.submit_update(c, 1, 10, {}, update(3.0))
    assert [x.name for x in coordinator.wait_for_round(deadline=0).contributions] == ["hospital_a", "hospital_c"]


def test_a_full_round_does_not_take_latecomers(coordinator: Coordinator) -> None:
    coordinator.join("hospital_a", 10, INFO)
    open_round(coordinator, 1, ["hospital_a"])

    late = coordinator.join("hospital_b", 10, INFO)

    assert isinstance(coordinator.next_instruction(late, timeout=0), Wait)


def test_a_session_ends_when_its_hospital_leaves_and_joins_again(coordinator: Coordinator) -> None:
    old = coordinator.join("hospital_a", 10, INFO)
    coordinator.leave(old)

    new = coordinator.join("hospital_a", 10, INFO)

    with pytest.raises(SessionReplaced):
        coordinator.leave(old)
    assert coordinator.hospitals() == ["hospital_a"]
    assert isinstance(coordinator.next_instruction(new, timeout=0), Wait)


def test_over_selection_closes_at_the_first_k_updates_and_refuses_the_straggler(coordinator: Coordinator) -> None:
    sessions = {name: coordinator.join(name, 10, INFO) for name in ("hospital_a", "hospital_b", "hospital_c")}
    task = Task(1, 5, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(GLOBAL))
    coordinator.open_round(task, list(sessions), FedAvg().begin(GLOBAL), min_fit=2, enough=2)

    coordinator.submit_update(sessions["hospital_b"], 1, 10, {}, update(1.0))
    coordinator.submit_update(sessions["hospital_c"], 1, 10, {}, update(3.0))
    outcome = coordinator.wait_for_round(deadline=float("inf"))  # returns at once: two updates are enough
    closed = coordinator.close_round()

    assert [c.name for c in closed.contributions] == ["hospital_b", "hospital_c"]
    assert outcome.missing == ["hospital_a"]
    np.testing.assert_allclose(closed.accumulator.result()["w"], np.full(3, 2.0))
    with pytest.raises(Rejected, match="round 1 is not open"):
        coordinator.submit_update(sessions["hospital_a"], 1, 10, {}, update(9.0))


def test_a_silent_hospital_is_taken_for_gone_and_comes_back_when_it_calls() -> None:
    now = [0.0]
    coordinator = Coordinator(data_info=INFO, clock=lambda: now[0], heartbeat_timeout=60)
    a, b = coordinator.join("hospital_a", 10, INFO), coordinator.join("hospital_b", 10, INFO)
    open_round(coordinator, 1, ["hospital_a", "hospital_b"])
    coordinator.submit_update(a, 1, 10, {}, update(1.0))

    now[0] = 59.0
    still_waiting = coordinator.wait_for_round(deadline=0)  # b is quiet, but not for long enough yet
    now[0] = 61.0
    outcome = coordinator.wait_for_round(deadline=float("inf"))  # b has been silent too long: not waited for
    coordinator.heartbeat(b)  # ... and any call brings it back for the next round

    assert still_waiting.missing == ["hospital_b"]
    assert outcome.missing == [] and [c.name for c in outcome.contributions] == ["hospital_a"]
    assert coordinator.hospitals() == ["hospital_a", "hospital_b"]


def test_heartbeats_keep_a_long_training_hospital_in_the_round() -> None:
    now = [0.0]
    coordinator = Coordinator(data_info=INFO, clock=lambda: now[0], heartbeat_timeout=60)
    a = coordinator.join("hospital_a", 10, INFO)
    open_round(coordinator, 1, ["hospital_a"])

    for minute in range(1, 11):  # ten minutes of local training, a beat every 30 s
        now[0] = minute * 60.0 - 30
        coordinator.heartbeat(a)
        now[0] = minute * 60.0
        assert coordinator.wait_for_round(deadline=0).missing == ["hospital_a"]
        coordinator.heartbeat(a)
    coordinator.submit_update(a, 1, 10, {}, update(1.0))

    assert [c.name for c in coordinator.close_round().contributions] == ["hospital_a"]


def test_uploads_beyond_the_receive_slots_wait_for_a_free_one() -> None:
    coordinator = Coordinator(data_info=INFO, max_receiving=1)
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    open_round(coordinator, 1, ["hospital_a", "hospital_b"])
    entered = threading.Event()

    def second_upload() -> None:
        with coordinator.begin_update(b, 1, 10, {}, layout_of(GLOBAL)) as pending:
            entered.set()
            pending.commit(update(3.0))

    with coordinator.begin_update(a, 1, 10, {}, layout_of(GLOBAL)) as first:
        waiter = threading.Thread(target=second_upload)
        waiter.start()
        blocked_while_first_holds_the_slot = not entered.wait(0.3)
        first.commit(update(1.0))
    waiter.join(timeout=30)

    assert blocked_while_first_holds_the_slot
    assert entered.is_set()
    np.testing.assert_allclose(coordinator.close_round().accumulator.result()["w"], np.full(3, 2.0))


def test_an_upload_waiting_for_a_slot_is_refused_when_its_round_closes() -> None:
    coordinator = Coordinator(data_info=INFO, max_receiving=1)
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    open_round(coordinator, 1, ["hospital_a", "hospital_b"])
    errors: list[Exception] = []

    with coordinator.begin_update(a, 1, 10, {}, layout_of(GLOBAL)):
        second = coordinator.begin_update(b, 1, 10, {}, layout_of(GLOBAL))  # header accepted, no slot yet

        def second_upload() -> None:
            try:
                with second:  # waits for a slot, before or after the round closes: refused either way
                    pass
            except Rejected as exc:
                errors.append(exc)

        waiter = threading.Thread(target=second_upload)
        waiter.start()
        coordinator.close_round()
        waiter.join(timeout=30)

    assert len(errors) == 1 and "closed while the update waited" in str(errors[0])


def test_a_revoked_hospitals_waiting_poll_is_refused_and_the_round_goes_on_without_it(
    coordinator: Coordinator,
) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    got: list[object] = []

    def poll() -> None:
        try:
            got.append(coordinator.next_instruction(b, timeout=30))
        except PermissionDenied as exc:
            got.append(exc)

    poller = threading.Thread(target=poll)
    poller.start()
    coordinator.revoke({"hospital_b": "the certificate of 'hospital_b' (serial 1f) has been revoked"})
    poller.join(timeout=30)
    coordinator.revoke({"hospital_b": "revoked again"})  # a session already closed: nothing changes

    assert len(got) == 1 and isinstance(got[0], PermissionDenied) and "(serial 1f) has been revoked" in str(got[0])
    assert coordinator.hospitals() == ["hospital_a"] and coordinator.name_of(a) == "hospital_a"
    assert coordinator.name_of(b) is None and isinstance(coordinator.session_error(b), PermissionDenied)
    with pytest.raises(PermissionDenied, match="serial 1f"):
        coordinator.heartbeat(b)


def test_a_hospital_revoked_mid_round_is_dropped_from_it_at_once(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    coordinator.join("hospital_b", 10, INFO)
    coordinator.open_round(
        Task(1, 5, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(GLOBAL)),
        ["hospital_a", "hospital_b"],
        FedAvg().begin(GLOBAL),
        min_fit=1,
    )
    coordinator.submit_update(a, 1, 10, {}, update(1.0))

    coordinator.revoke({"hospital_b": "the certificate of 'hospital_b' (serial 2) has been revoked"})
    outcome = coordinator.wait_for_round(deadline=float("inf"))  # would wait forever for hospital_b

    assert [c.name for c in outcome.contributions] == ["hospital_a"] and outcome.missing == []


def test_a_newer_poll_of_the_same_hospital_ends_its_older_one(coordinator: Coordinator) -> None:
    a = coordinator.join("hospital_a", 10, INFO)
    older: list[object] = []
    first = threading.Thread(target=lambda: older.append(coordinator.next_instruction(a, timeout=30)))
    first.start()
    with coordinator._cond:
        assert coordinator._cond.wait_for(lambda: coordinator._members.hospitals["hospital_a"].polls == 1, timeout=30)

    newer = coordinator.next_instruction(a, timeout=0)
    first.join(timeout=30)

    assert isinstance(newer, Wait) and len(older) == 1 and isinstance(older[0], Wait)
    assert "newer poll" in older[0].reason


def test_of_the_uploads_waiting_for_admission_only_the_first_in_line_asks_and_all_get_in() -> None:
    """A hundred waiting hospitals each asking the intake four times a second took the CPU the uploads
    under way needed (bench/many_hospitals.py, 100 hospitals on loopback): the others wait to be woken."""
    looks: dict[int, int] = {}  # the intake's clock reads by thread: one per ask

    def clock() -> float:
        looks[threading.get_ident()] = looks.get(threading.get_ident(), 0) + 1
        return time.monotonic()

    intake = Intake(8, in_memory=1, probe_s=0.001, clock=clock, links_are_slow=lambda admitted: False)
    coordinator = Coordinator(data_info=INFO, intake=intake)
    names = [f"hospital_{i}" for i in range(6)]
    sessions = [coordinator.join(name, 10, INFO) for name in names]
    open_round(coordinator, 1, names)

    def upload(session: str, value: float) -> None:
        with coordinator.begin_update(session, 1, 10, {}, layout_of(GLOBAL)) as pending:
            pending.commit(update(value))

    with coordinator.begin_update(sessions[0], 1, 10, {}, layout_of(GLOBAL)) as first:
        waiters = [threading.Thread(target=upload, args=(s, float(i))) for i, s in enumerate(sessions[1:], 1)]
        for waiter in waiters:
            waiter.start()
        wait_until(lambda: sum(looks.values()) >= 300, 30, lambda: f"{sum(looks.values())} asks")
        askers = [ident for ident, n in looks.items() if ident != threading.get_ident()]
        first.commit(update(0.0))
    for waiter in waiters:
        waiter.join(timeout=30)

    assert len(askers) == 1, f"{len(askers)} waiting uploads asked the intake"
    np.testing.assert_allclose(coordinator.close_round().accumulator.result()["w"], np.full(3, 2.5))
