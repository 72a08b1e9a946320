"""The hospital's connection loop against a scripted fake coordinator: retries, rejoins, refusals."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from medfed.client.node import HospitalNode, NodeError
from medfed.client.trainer import Trainer
from medfed.common.data.folders import DatasetInfo, HospitalData, Split
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.tensors import encode
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
        self.script = {"Join": joins, "GetTask": polls, "SubmitUpdate": submits}
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

    def SubmitUpdate(self, messages: Iterator[pb.UpdateMessage], timeout: float) -> pb.SubmitReply:
        self.submitted.append(next(messages).header)
        list(messages)
        return self._next("SubmitUpdate")

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
    trainer = Trainer(DATA, torch.device("cpu"), name="hospital_a", progress=False)
    return HospitalNode(
        stub, DATA, trainer, name="hospital_a", server="coord:8443", max_wait=max_wait,  # type: ignore[arg-type]
        sleep=clock.sleep, clock=lambda: clock.now,
    )  # fmt: skip


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
