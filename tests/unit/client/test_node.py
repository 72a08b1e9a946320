"""The hospital's connection loop against a scripted fake coordinator: retries, rejoins, refusals."""

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from medfed.client.connection import GrpcConnection
from medfed.client.node import HospitalNode, PolicyRefusal
from medfed.client.policy import HospitalPolicy
from medfed.client.protocol import (
    CoordinatorAway,
    JoinInfo,
    NodeError,
    Session,
    SessionLost,
    SubmitOutcome,
    Submitted,
)
from medfed.client.trainer import Trainer
from medfed.common.data.folders import DatasetInfo, HospitalData, Split
from medfed.common.messages import FinishedNotice, ModelSpec, ReceivedTask, TaskHeader, TrainSettings, UpdateHeader
from medfed.common.tensors import EncodedModel, encode
from medfed.common.wire.convert import layout_to_proto, model_spec_to_proto, settings_to_proto
from medfed.proto.v1 import federation_pb2 as pb

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(4, 4))
DATA = HospitalData(
    Path("h"), "hospital_a", INFO, {"train": Split(np.zeros((5, 1, 4, 4), dtype=np.uint8), np.zeros(5, dtype=np.int64))}
)
MODEL = {"w": np.arange(4.0, dtype=np.float32)}


class FakeRpcError(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details or code.name

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> Any: ...
    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def task_stream(round_number: int) -> list[pb.TaskMessage]:
    encoded = encode(MODEL)
    header = pb.TaskHeader(
        round=round_number, total_rounds=2, config=settings_to_proto(TrainSettings(0, 1e-3, 4, 0)),
        model=model_spec_to_proto(ModelSpec("cnn", 1, 2)), tensors=layout_to_proto(encoded.layout),
    )  # fmt: skip
    chunks = (pb.TaskMessage(chunk=pb.Chunk(offset=o, data=d)) for o, d in encoded.chunks(chunk_size=5))
    return [pb.TaskMessage(task=header), *chunks]


class FakeStub:
    """Each call takes the next scripted outcome: an exception to raise, or a value (or callable) to return."""

    def __init__(self, joins: list[Any], polls: list[Any], submits: list[Any]) -> None:
        self.script = {"Join": joins, "GetTask": polls, "Upload": submits}
        self.calls: list[str] = []
        self.submitted: list[pb.UpdateHeader] = []

    def _next(self, name: str) -> Any:
        self.calls.append(name)
        outcome = self.script[name].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def Join(self, request: pb.JoinRequest, timeout: float) -> pb.JoinReply:
        return self._next("Join")

    def GetTask(self, request: pb.TaskRequest, timeout: float) -> Iterator[pb.TaskMessage]:
        return iter(self._next("GetTask"))

    def Upload(self, messages: Iterator[pb.UpdateMessage], timeout: float) -> Iterator[pb.UploadReply]:
        """Admits the upload after its header, reads its chunks (in a thread, as gRPC does), then answers
        with the scripted outcome."""
        self.submitted.append(next(messages).header)
        reader = threading.Thread(target=lambda: list(messages))
        yield pb.UploadReply(admitted=pb.Admitted())
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "the hospital did not send its chunks once admitted"
        yield pb.UploadReply(done=self._next("Upload"))

    def Leave(self, request: pb.LeaveRequest, timeout: float) -> pb.LeaveReply:
        return pb.LeaveReply()


def joined(session: str = "s1") -> pb.JoinReply:
    return pb.JoinReply(session_id=session)


FINISHED = [pb.TaskMessage(finished=pb.Finished(reason="done", rounds_completed=2))]
UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")


class FakeTime:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def node(stub: FakeStub, clock: FakeTime, max_wait: float = 60.0) -> HospitalNode:
    """The hospital's loop over the real gRPC connection, with the stub scripted."""
    trainer = Trainer(DATA, torch.device("cpu"), name="hospital_a", progress=False)
    connection = GrpcConnection(
        stub, server="coord:8443", max_wait=max_wait, sleep=clock.sleep, clock=lambda: clock.now,  # type: ignore[arg-type]
    )  # fmt: skip
    return HospitalNode(
        connection, DATA, trainer, name="hospital_a", max_wait=max_wait, sleep=clock.sleep, clock=lambda: clock.now
    )


def test_an_unreachable_coordinator_is_retried_with_growing_backoff() -> None:
    stub = FakeStub([UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, joined()], [task_stream(1), FINISHED], [pb.SubmitReply()])
    clock = FakeTime()

    rounds = node(stub, clock).run()

    assert rounds == 1 and stub.calls.count("Join") == 4
    assert len(clock.sleeps) == 3 and clock.sleeps[2] > clock.sleeps[0]
    assert stub.submitted[0].round == 1 and stub.submitted[0].num_examples == 5


def test_giving_up_after_max_wait_says_where_and_why() -> None:
    stub = FakeStub([UNAVAILABLE] * 100, [], [])
    clock = FakeTime()

    with pytest.raises(
        NodeError, match=r"cannot reach the coordinator at coord:8443 \(join\) for 30 s: connection refused"
    ):
        node(stub, clock, max_wait=30).run()
    assert clock.now == pytest.approx(30)


def test_a_coordinator_that_forgot_the_session_is_joined_again() -> None:
    forgot = FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "unknown session: join first")
    stub = FakeStub([joined("s1"), joined("s2")], [forgot, task_stream(1), FINISHED], [pb.SubmitReply()])

    node(stub, FakeTime()).run()

    assert stub.calls[:3] == ["Join", "GetTask", "Join"]
    assert stub.submitted[0].session_id == "s2"


@pytest.mark.parametrize(
    ("refusal", "fatal"),
    [
        (FakeRpcError(grpc.StatusCode.ALREADY_EXISTS), False),  # a retried upload counted once
        (FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "round 1 is not open"), False),  # too late: discarded
        (FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "tensor 'w' holds NaN"), True),
    ],
)
def test_refused_updates(refusal: FakeRpcError, fatal: bool) -> None:
    stub = FakeStub([joined()], [task_stream(1), FINISHED], [refusal])
    run: Callable[[], int] = node(stub, FakeTime()).run

    if fatal:
        with pytest.raises(NodeError, match="refused this hospital's update: tensor 'w' holds NaN"):
            run()
    else:
        assert run() == 1


def test_incompatible_data_and_replaced_sessions_end_the_node() -> None:
    refused = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "hospital_a cannot join: its channels 3 differ")
    replaced = FakeRpcError(grpc.StatusCode.ABORTED, "this hospital joined again from another process")

    with pytest.raises(NodeError, match="refused hospital_a: hospital_a cannot join: its channels 3 differ"):
        node(FakeStub([refused], [], []), FakeTime()).run()
    with pytest.raises(NodeError, match="joined again from another process"):
        node(FakeStub([joined()], [replaced], []), FakeTime()).run()


class ScriptedConnection:
    """A Connection with no gRPC at all: each call takes its next scripted outcome."""

    def __init__(self, joins: list[Any], tasks: list[Any]) -> None:
        self.joins, self.tasks = joins, tasks
        self.calls: list[str] = []
        self.updates: list[UpdateHeader] = []
        self.left: list[tuple[str, str]] = []

    def _next(self, name: str, script: list[Any]) -> Any:
        self.calls.append(name)
        outcome = script.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def join(self, hospital: JoinInfo, *, retry: bool = True) -> Session:
        return self._next("join" if retry else "join once", self.joins)

    def next_task(self, session: Session) -> ReceivedTask | FinishedNotice | None:
        return self._next("next_task", self.tasks)

    def submit(self, header: UpdateHeader, model: EncodedModel) -> SubmitOutcome:
        self.calls.append("submit")
        self.updates.append(header)
        return SubmitOutcome(Submitted.ACCEPTED)

    def heartbeat(self, session: Session) -> None: ...

    def leave(self, session: Session, reason: str) -> None:
        self.left.append((session.federation, reason))


def received(round_number: int, total: int = 2) -> ReceivedTask:
    header = TaskHeader(round_number, total, TrainSettings(0, 1e-3, 4, 0), ModelSpec("cnn", 1, 2))
    return ReceivedTask(header, dict(MODEL))


def scripted_node(connection: ScriptedConnection, clock: FakeTime, **kwargs: Any) -> HospitalNode:
    trainer = Trainer(DATA, torch.device("cpu"), name="hospital_a", progress=False)
    return HospitalNode(connection, DATA, trainer, name="hospital_a", max_wait=60, sleep=clock.sleep,
                        clock=lambda: clock.now, **kwargs)  # fmt: skip


def test_a_node_that_stays_takes_part_in_the_next_federation_after_the_coordinator_restarts() -> None:
    connection = ScriptedConnection(
        joins=[Session("s1", "f1"), CoordinatorAway("the federation is over"), CoordinatorAway("down"),
               NodeError("the coordinator refused hospital_a: still starting"), Session("s2", "f2")],
        tasks=[received(1), FinishedNotice("all rounds completed", 1), received(1), received(2),
               FinishedNotice("all rounds completed", 2)],
    )  # fmt: skip
    clock = FakeTime()
    with pytest.raises(IndexError):  # the script ran out: a node that stays never returns by itself
        scripted_node(connection, clock, stay=True).run()

    assert [(u.session_id, u.round) for u in connection.updates] == [("s1", 1), ("s2", 1), ("s2", 2)]
    # three waits (over, down, refused), then f2; the fifth attempt found the script's end
    assert connection.calls.count("join once") == 5 and len(clock.sleeps) == 3
    assert all(delay <= 30 for delay in clock.sleeps) and connection.left == []


def test_a_task_that_breaks_the_policy_is_refused_and_with_stay_its_federation_is_not_joined_again() -> None:
    policy = HospitalPolicy(max_rounds=10)
    connection = ScriptedConnection(
        joins=[Session("s1", "f1"), Session("s2", "f1"), Session("s3", "f2")],
        tasks=[received(1, total=50), received(1, total=10), FinishedNotice("all rounds completed", 1)],
    )  # fmt: skip
    with pytest.raises(IndexError):
        scripted_node(connection, FakeTime(), stay=True, policy=policy).run()

    assert [u.session_id for u in connection.updates] == ["s3"]  # nothing trained for f1
    (f1, reason), (again, why) = connection.left
    assert f1 == again == "f1" and "max_rounds = 10: the federation plans 50 rounds" in reason
    assert "left this federation earlier" in why

    alone = ScriptedConnection(joins=[Session("s1", "f1")], tasks=[received(1, total=50)])
    with pytest.raises(PolicyRefusal, match=r"refused round 1's task: it breaks the policy \(max_rounds = 10"):
        scripted_node(alone, FakeTime(), policy=policy).run()
    assert alone.updates == []


def test_the_loop_rejoins_a_lost_session_and_waits_out_a_stopped_coordinator_over_any_connection() -> None:
    connection = ScriptedConnection(
        joins=[Session("s1", "f"), Session("s2", "f"), CoordinatorAway("down"), Session("s3", "f")],
        tasks=[SessionLost("unknown session"), received(1), FinishedNotice("stopping", 0, resumable=True),
               received(1), received(2), FinishedNotice("all rounds completed", 2)],
    )  # fmt: skip
    clock = FakeTime()
    trainer = Trainer(DATA, torch.device("cpu"), name="hospital_a", progress=False)
    hospital = HospitalNode(connection, DATA, trainer, name="hospital_a", max_wait=60, sleep=clock.sleep,
                            clock=lambda: clock.now)  # fmt: skip

    rounds = hospital.run()

    assert rounds == 2  # round 1 was trained twice (the coordinator restarted): it counts once
    assert connection.calls[:3] == ["join", "next_task", "join"]  # the lost session is joined again
    assert connection.calls.count("join once") == 2 and len(clock.sleeps) == 1  # away once, then back
    assert [u.session_id for u in connection.updates] == ["s2", "s3", "s3"]
