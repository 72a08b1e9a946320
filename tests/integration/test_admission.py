"""Uploads are admitted before their bytes flow (issue 20): a hospital waiting for a receive slot has sent
its header and nothing more, however large the flow-control windows; and however many hospitals upload
at once, the coordinator holds at most two updates in memory (the others are received into files)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np

from medfed.client.connection import GrpcConnection
from medfed.client.protocol import Submitted
from medfed.common.data.folders import DatasetInfo
from medfed.common.messages import ModelSpec, TrainSettings, UpdateHeader
from medfed.common.provenance.digests import update_digest
from medfed.common.tensors import encode
from medfed.common.wire.convert import info_to_proto
from medfed.common.wire.options import channel_options
from medfed.common.wire.stream import update_messages
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.coordinator import Coordinator
from medfed.server.intake import Headroom, Intake
from medfed.server.rounds import Task
from medfed.server.servicer import create_server
from medfed.server.strategy.fedavg import FedAvg
from tests.helpers import upload, wait_until
from tests.tcp_proxy import TcpProxy

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
GLOBAL = {"w": np.zeros(4_000_000, dtype=np.float32), "n": np.array(1)}  # 16 MB: 16 chunks of 1 MiB
HEADER_ROOM = 64 << 10
"""more than a header and its HTTP/2 framing; less than one of the update's 1 MiB chunks"""


def stays_below(value: Callable[[], int], limit: int, seconds: float) -> bool:
    """Poll ``value`` for ``seconds``: False as soon as it reaches ``limit``, True if it never does."""
    try:
        wait_until(lambda: value() >= limit, seconds, lambda: "")
    except AssertionError:
        return True
    return False


def test_a_hospital_waiting_for_a_receive_slot_has_sent_no_more_than_its_header() -> None:
    coordinator = Coordinator(data_info=INFO, max_receiving=1)
    server, port = create_server(coordinator, "127.0.0.1:0", poll_timeout=5.0)
    server.start()
    proxy = TcpProxy()  # hospital_b reaches the coordinator through it, which counts what b sends
    proxy.forward_to(port)
    direct = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    counted = grpc.insecure_channel(f"127.0.0.1:{proxy.port}", options=channel_options())
    a_stub, b_stub = pb_grpc.FederationStub(direct), pb_grpc.FederationStub(counted)
    release = threading.Event()
    outcomes: dict[str, object] = {}
    try:
        sessions = {}
        for name, stub in (("hospital_a", a_stub), ("hospital_b", b_stub)):
            request = pb.JoinRequest(name=name, num_examples=10, data=info_to_proto(INFO))
            sessions[name] = stub.Join(request, timeout=10).session_id
        task = Task(1, 1, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(GLOBAL))
        coordinator.open_round(task, ["hospital_a", "hospital_b"], FedAvg().begin(GLOBAL))
        update = encode({"w": np.ones(4_000_000, dtype=np.float32), "n": np.array(1)})
        header = UpdateHeader(sessions["hospital_a"], 1, 10, {}, update.layout)

        def holds_its_slot() -> Iterator[pb.UpdateMessage]:
            messages = update_messages(header, update)
            yield next(messages)  # the header; the helper waits for `admitted` before asking for more
            yield next(messages)  # one chunk, then it holds the only receive slot until released
            release.wait(60)
            yield from messages

        first = threading.Thread(target=lambda: outcomes.update(a=upload(a_stub, holds_its_slot(), timeout=60)))
        first.start()
        wait_until(lambda: coordinator.intake.receiving == 1, 30, lambda: "hospital_a was not admitted")
        connection = GrpcConnection(b_stub, server=f"127.0.0.1:{proxy.port}", max_wait=30)
        b_header = UpdateHeader(sessions["hospital_b"], 1, 10, {}, update.layout)
        second = threading.Thread(target=lambda: outcomes.update(b=connection.submit(b_header, update)))
        second.start()

        def b_waits() -> bool:
            views = coordinator.monitor.snapshot().hospitals
            return any(h.name == "hospital_b" and h.state == "uploading" for h in views)

        wait_until(b_waits, 30, lambda: "hospital_b's header did not reach the coordinator")
        waiting_bytes = proxy.bytes_upstream
        assert stays_below(lambda: proxy.bytes_upstream, HEADER_ROOM, seconds=1.0), proxy.bytes_upstream
        release.set()
        first.join(timeout=60)
        second.join(timeout=60)
    finally:
        release.set()
        direct.close()
        counted.close()
        proxy.close()
        server.stop(grace=None).wait()

    assert waiting_bytes < HEADER_ROOM
    assert getattr(outcomes["b"], "kind", None) is Submitted.ACCEPTED
    assert "accepted" in getattr(outcomes["a"], "message", "")
    assert proxy.bytes_upstream > update.layout.total_bytes  # once admitted, it sent the whole update
    closed = coordinator.close_round()
    assert sorted(c.name for c in closed.contributions) == ["hospital_a", "hospital_b"]


def test_however_many_hospitals_upload_at_once_two_updates_at_most_are_held_in_memory(tmp_path: Path) -> None:
    hospitals = [f"hospital_{i}" for i in range(8)]
    model = {"w": np.zeros(250_000, dtype=np.float32), "n": np.array(1)}
    coordinator = Coordinator(
        data_info=INFO,
        intake=Intake(
            len(hospitals), links_are_slow=lambda admitted: True, headroom=Headroom(lambda: 0, waited=lambda: None)
        ),
        spool_dir=tmp_path,
    )
    sessions = {name: coordinator.join(name, 10, INFO) for name in hospitals}
    task = Task(1, 1, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(model))
    coordinator.open_round(task, hospitals, FedAvg().begin(model))
    all_admitted = threading.Barrier(len(hospitals), timeout=30)
    spooled: list[bool] = []

    def hospital(index: int, name: str) -> None:
        update = encode({"w": np.full(250_000, float(index), dtype=np.float32), "n": np.array(1)})
        digest = update_digest(coordinator.federation_id, 1, 10, update.layout, update.buffer, delta=False)
        with coordinator.begin_update(sessions[name], 1, 10, {}, update.layout) as pending:
            all_admitted.wait()  # every hospital holds a receive slot at once before any byte arrives
            spooled.append(not pending.admission.in_memory)  # type: ignore[union-attr]
            pending.commit(pending.receive(update.chunks(chunk_size=64 << 10)), digest)

    threads = [threading.Thread(target=hospital, args=(i, name)) for i, name in enumerate(hospitals)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    model_bytes = encode(model).layout.total_bytes
    assert coordinator.intake.memory_bytes_peak == 2 * model_bytes and coordinator.intake.memory_bytes == 0
    assert sorted(spooled) == [False, False] + [True] * (len(hospitals) - 2)
    closed = coordinator.close_round()
    assert len(closed.contributions) == len(hospitals)
    np.testing.assert_allclose(closed.accumulator.result()["w"], np.full(250_000, np.mean(range(len(hospitals)))))
    assert list(tmp_path.iterdir()) == []  # every spooled update's file is gone once folded
