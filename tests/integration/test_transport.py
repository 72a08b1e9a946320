"""The servicer over a real in-process gRPC server: streaming beyond 4 MiB, and malformed streams."""

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from medfed.common.data.folders import DatasetInfo
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.tensors import encode, from_chunks
from medfed.common.wire.convert import info_to_proto, layout_from_proto, layout_to_proto
from medfed.common.wire.options import channel_options
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.coordinator import Coordinator
from medfed.server.rounds import Task
from medfed.server.servicer import create_server
from medfed.server.strategy.fedavg import FedAvg
from tests.helpers import upload

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
GLOBAL = {
    "big": np.arange(6_000_000, dtype=np.float32),
    "n": np.array(3),
}  # 24 MB: 6x the 4 MiB limit


@pytest.fixture
def federation() -> Iterator[tuple[Coordinator, pb_grpc.FederationStub]]:
    coordinator = Coordinator(data_info=INFO)
    server, port = create_server(coordinator, "127.0.0.1:0", poll_timeout=5.0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    yield coordinator, pb_grpc.FederationStub(channel)
    channel.close()
    server.stop(grace=None).wait()


def join(stub: pb_grpc.FederationStub, name: str) -> str:
    return stub.Join(pb.JoinRequest(name=name, num_examples=10, data=info_to_proto(INFO)), timeout=10).session_id


def open_round(coordinator: Coordinator, names: list[str]) -> None:
    task = Task(1, 1, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(GLOBAL))
    coordinator.open_round(task, names, FedAvg().begin(GLOBAL))


def update_messages(session: str, state: dict[str, np.ndarray]) -> Iterator[pb.UpdateMessage]:
    encoded = encode(state)
    yield pb.UpdateMessage(
        header=pb.UpdateHeader(
            session_id=session,
            round=1,
            num_examples=10,
            kind=pb.UPDATE_KIND_WEIGHTS,
            tensors=layout_to_proto(encoded.layout),
        )
    )
    for offset, data in encoded.chunks():
        yield pb.UpdateMessage(chunk=pb.Chunk(offset=offset, data=data))


def test_models_larger_than_the_message_limit_stream_both_ways(federation) -> None:
    coordinator, stub = federation
    session = join(stub, "hospital_a")
    open_round(coordinator, ["hospital_a"])

    stream = stub.GetTask(pb.TaskRequest(session_id=session), timeout=30)
    header = next(stream).task
    chunks = ((m.chunk.offset, m.chunk.data) for m in stream)
    received = from_chunks(layout_from_proto(header.tensors, max_total_bytes=1 << 30), chunks)
    reply = upload(stub, update_messages(session, received), timeout=30)

    assert header.round == 1 and np.array_equal(received["big"], GLOBAL["big"])
    assert "accepted" in reply.message
    assert np.array_equal(coordinator.close_round().accumulator.result()["big"], GLOBAL["big"])


def test_malformed_update_streams_get_invalid_argument(federation) -> None:
    coordinator, stub = federation
    session = join(stub, "hospital_a")
    open_round(coordinator, ["hospital_a"])
    valid = list(update_messages(session, GLOBAL))

    cases = {
        "no header": valid[1:],
        "two headers": [valid[0], valid[0], *valid[1:]],
        "truncated": valid[:-1],
        "wrong tensors": list(update_messages(session, {"other": np.zeros(2, dtype=np.float32)})),
    }
    for what, messages in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            upload(stub, iter(messages), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what

    upload(stub, iter(valid), timeout=30)  # the round still accepts a good update afterwards
    with pytest.raises(grpc.RpcError) as err:
        upload(stub, iter(valid), timeout=30)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_unknown_sessions_and_incompatible_hospitals_are_refused(federation) -> None:
    _, stub = federation
    other = info_to_proto(INFO.model_copy(update={"channels": 3}))

    with pytest.raises(grpc.RpcError) as unknown:
        next(stub.GetTask(pb.TaskRequest(session_id="nope"), timeout=10))
    with pytest.raises(grpc.RpcError) as incompatible:
        stub.Join(pb.JoinRequest(name="hospital_x", num_examples=5, data=other), timeout=10)

    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert incompatible.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "channels" in incompatible.value.details()


def test_a_second_server_cannot_share_a_port() -> None:
    coordinator = Coordinator()
    first, port = create_server(coordinator, "127.0.0.1:0")
    try:
        with pytest.raises(RuntimeError):
            create_server(coordinator, f"127.0.0.1:{port}")
    finally:
        first.stop(grace=None)


def test_a_stalled_upload_is_cancelled_and_frees_its_hospitals_slot() -> None:
    coordinator = Coordinator(data_info=INFO)
    server, port = create_server(coordinator, "127.0.0.1:0", upload_timeout=1.0)
    server.start()
    stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()))
    try:
        session = join(stub, "hospital_a")
        open_round(coordinator, ["hospital_a"])
        release = threading.Event()
        valid = list(update_messages(session, GLOBAL))

        def stalls() -> Iterator[pb.UpdateMessage]:
            yield valid[0]  # the header, then nothing until the coordinator gives up
            release.wait(60)

        with pytest.raises(grpc.RpcError) as err:
            upload(stub, stalls(), timeout=30)
        release.set()

        assert err.value.code() == grpc.StatusCode.CANCELLED
        assert "accepted" in upload(stub, iter(valid), timeout=30).message
    finally:
        server.stop(grace=None).wait()


def test_a_hospital_that_hangs_up_mid_download_frees_its_send_slot() -> None:
    coordinator = Coordinator(data_info=INFO)
    server, port = create_server(coordinator, "127.0.0.1:0", poll_timeout=5.0, max_sending=1)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    stub = pb_grpc.FederationStub(channel)
    try:
        quitter, patient = join(stub, "hospital_a"), join(stub, "hospital_b")
        open_round(coordinator, ["hospital_a", "hospital_b"])
        abandoned = stub.GetTask(pb.TaskRequest(session_id=quitter), timeout=30)
        next(abandoned)  # the header: hospital_a holds the only send slot now

        abandoned.cancel()
        stream = stub.GetTask(pb.TaskRequest(session_id=patient), timeout=30)  # would time out on a leaked slot
        header = next(stream).task
        chunks = ((m.chunk.offset, m.chunk.data) for m in stream)
        received = from_chunks(layout_from_proto(header.tensors, max_total_bytes=1 << 30), chunks)

        assert np.array_equal(received["big"], GLOBAL["big"])
    finally:
        channel.close()
        server.stop(grace=None).wait()


def fetch_model(stub: pb_grpc.FederationStub, session: str, timeout: float) -> dict[str, np.ndarray]:
    stream = stub.GetTask(pb.TaskRequest(session_id=session), timeout=timeout)
    header = next(stream).task
    chunks = ((m.chunk.offset, m.chunk.data) for m in stream)
    return from_chunks(layout_from_proto(header.tensors, max_total_bytes=1 << 30), chunks)


@pytest.mark.parametrize(
    ("max_sending", "stall_timeout", "streams"),
    [(2, 600.0, 3), (1, 1.0, 1)],
    ids=["one slot per hospital however many streams it opens", "a hospital that stops reading loses its slot"],
)
def test_a_hospital_that_does_not_read_its_downloads_cannot_keep_the_model_from_others(
    max_sending: int, stall_timeout: float, streams: int, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(data_info=INFO)
    server, port = create_server(
        coordinator, "127.0.0.1:0", poll_timeout=5.0, max_sending=max_sending, stall_timeout=stall_timeout
    )
    server.start()
    # A client that does not read keeps its receive window where it starts (no bandwidth probing to grow it).
    unread_window = [*channel_options(), ("grpc.http2.bdp_probe", 0)]
    hostile_channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=unread_window)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    hostile_stub, stub = pb_grpc.FederationStub(hostile_channel), pb_grpc.FederationStub(channel)
    unread = []
    try:
        hostile, honest = join(hostile_stub, "hostile"), join(stub, "honest")
        open_round(coordinator, ["hostile", "honest"])
        # Downloads of the 24 MB model that are never read: without the fix each holds a slot for good.
        for _ in range(streams):
            unread.append(hostile_stub.GetTask(pb.TaskRequest(session_id=hostile), timeout=120))
            next(unread[-1])  # the header: this stream has a slot now

        received = fetch_model(stub, honest, timeout=30)  # DEADLINE_EXCEEDED without the fix

        assert np.array_equal(received["big"], GLOBAL["big"])
        stalled = "the download of round 1's model to hostile made no progress for 1 s (--stall-timeout)"
        assert (stalled in caplog.text) == (stall_timeout == 1.0)
    finally:
        for call in unread:
            call.cancel()
        hostile_channel.close()
        channel.close()
        server.stop(grace=None).wait()
