"""The emulated hospital link of the benchmarks (bench/link_proxy.py) carries every byte, in order, both
ways, no sooner than its round trip allows; and a model goes down and an update up through it intact."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np

from medfed.client.connection import GrpcConnection
from medfed.client.protocol import Session, Submitted
from medfed.common.data.folders import DatasetInfo
from medfed.common.messages import ModelSpec, ReceivedTask, TrainSettings, UpdateHeader
from medfed.common.tensors import encode
from medfed.common.wire.convert import info_to_proto
from medfed.common.wire.options import channel_options
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.coordinator import Coordinator
from medfed.server.rounds import Task
from medfed.server.servicer import create_server
from medfed.server.strategy.fedavg import FedAvg

BENCH = Path(__file__).resolve().parents[2] / "bench"
INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))


def link_proxy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("link_proxy", BENCH / "link_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["link_proxy"] = module
    spec.loader.exec_module(module)
    return module


def test_a_stream_over_the_emulated_link_delivers_the_same_bytes_both_ways(tmp_path: Path) -> None:
    proxy_module = link_proxy()
    echo = socket.create_server(("127.0.0.1", 0))
    served: dict[str, str] = {}

    def serve() -> None:
        conn, _ = echo.accept()
        digest = hashlib.sha256()
        while data := conn.recv(1 << 16):
            digest.update(data)
            conn.sendall(data)  # an echo: what went out must come back, byte for byte
        served["got"] = digest.hexdigest()
        conn.close()

    server = threading.Thread(target=serve)
    server.start()
    proxy, port = proxy_module.start_link(echo.getsockname()[1], 40.0, 200.0, tmp_path / "link.port")
    try:
        payload = os.urandom(3_000_000)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as conn:
            returned = hashlib.sha256()
            received = 0

            def read() -> None:
                nonlocal received
                while data := conn.recv(1 << 16):
                    returned.update(data)
                    received += len(data)

            reader = threading.Thread(target=read)
            reader.start()
            for start in range(0, len(payload), 50_000):
                conn.sendall(payload[start : start + 50_000])
            conn.shutdown(socket.SHUT_WR)
            reader.join(timeout=60)
        elapsed = time.monotonic() - started
        server.join(timeout=60)
    finally:
        proxy_module.stop_link(proxy)
        echo.close()

    assert served["got"] == returned.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert received == len(payload)
    assert elapsed >= 0.04 + len(payload) * 8 / 200e6  # one round trip, and the bytes at 200 Mbit/s


def test_a_model_down_and_an_update_up_through_the_link_arrive_intact(tmp_path: Path) -> None:
    proxy_module = link_proxy()
    model = {"w": np.arange(2_000_000, dtype=np.float32), "n": np.array(4)}
    coordinator = Coordinator(data_info=INFO)
    server, port = create_server(coordinator, "127.0.0.1:0", poll_timeout=5.0)
    server.start()
    proxy, link_port = proxy_module.start_link(port, 30.0, None, tmp_path / "link.port")
    channel = grpc.insecure_channel(f"127.0.0.1:{link_port}", options=channel_options())
    try:
        stub = pb_grpc.FederationStub(channel)
        session = stub.Join(pb.JoinRequest(name="hospital_a", num_examples=10, data=info_to_proto(INFO)),
                            timeout=30).session_id  # fmt: skip
        task = Task(1, 1, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(model))
        coordinator.open_round(task, ["hospital_a"], FedAvg().begin(model))
        connection = GrpcConnection(stub, server=f"127.0.0.1:{link_port}", max_wait=30)
        received = connection.next_task(Session(session, coordinator.federation_id))
        assert isinstance(received, ReceivedTask)
        update = encode({"w": received.state["w"] * 2, "n": received.state["n"]})
        outcome = connection.submit(UpdateHeader(session, 1, 10, {}, update.layout), update)
        closed = coordinator.close_round()
    finally:
        channel.close()
        proxy_module.stop_link(proxy)
        server.stop(grace=None).wait()

    assert np.array_equal(received.state["w"], model["w"])
    assert outcome.kind is Submitted.ACCEPTED
    np.testing.assert_array_equal(closed.accumulator.result()["w"], model["w"] * 2)
