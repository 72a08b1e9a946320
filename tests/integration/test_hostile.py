"""A hostile hospital against a live coordinator: every bad input gets a precise status, the server keeps
serving, and the round's aggregate is exactly the honest hospitals' weighted average."""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from medfed.common.compression import encode_update
from medfed.common.data.folders import DatasetInfo, load_folder
from medfed.common.data.partition import partition_to_folders
from medfed.common.tensors import encode, from_chunks, is_float
from medfed.common.wire.convert import info_to_proto, layout_from_proto, layout_to_proto
from medfed.common.wire.options import channel_options
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.config import ServerConfig
from medfed.server.coordinator import Coordinator
from medfed.server.driver import run_federation
from medfed.server.run_dir import RunDir, load_model
from medfed.server.servicer import create_server
from medfed.server.strategy.fedavg import fedavg
from medfed.tools.local_run import ProcessGroup
from tests.helpers import InProcessModels, start_server, synthetic_dataset, upload

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
Code = grpc.StatusCode
State = dict[str, np.ndarray]


@dataclass
class Federation:
    stub: pb_grpc.FederationStub
    coordinator: Coordinator
    out: Path


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    coordinator = Coordinator(data_info=INFO, max_examples=1000)
    server, port = create_server(coordinator, "127.0.0.1:0", poll_timeout=1.0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    yield Federation(pb_grpc.FederationStub(channel), coordinator, tmp_path / "run")
    channel.close()
    server.stop(grace=None).wait()


def join(stub: pb_grpc.FederationStub, name: str, n: int = 10, info: DatasetInfo = INFO) -> str:
    return stub.Join(pb.JoinRequest(name=name, num_examples=n, data=info_to_proto(info)), timeout=10).session_id


def fetch(stub: pb_grpc.FederationStub, session: str) -> tuple[int, State]:
    """Long-poll until a task comes (the coordinator answers Wait while no round is open)."""
    while True:
        stream = iter(stub.GetTask(pb.TaskRequest(session_id=session), timeout=30))
        first = next(stream)
        if first.WhichOneof("kind") == "task":
            break
    header = first.task
    state = from_chunks(
        layout_from_proto(header.tensors, max_total_bytes=1 << 30), ((m.chunk.offset, m.chunk.data) for m in stream)
    )
    return header.round, state


def messages(session: str, state: State, *, round_number: int = 1, n: int = 10,
             metrics: dict[str, float] | None = None, chunk: int = 20_000) -> list[pb.UpdateMessage]:  # fmt: skip
    encoded = encode(state)
    header = pb.UpdateHeader(
        session_id=session, round=round_number, num_examples=n, metrics=metrics or {},
        kind=pb.UPDATE_KIND_WEIGHTS, tensors=layout_to_proto(encoded.layout),
    )  # fmt: skip
    chunks = [pb.UpdateMessage(chunk=pb.Chunk(offset=o, data=d)) for o, d in encoded.chunks(chunk)]
    return [pb.UpdateMessage(header=header), *chunks]


def status(call: Callable[[], object]) -> Code:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return Code.OK


def shifted(state: State, by: float) -> State:
    return {k: (v + by).astype(v.dtype) if is_float(v.dtype) else v.copy() for k, v in state.items()}


def start_driver(federation: Federation, **settings: object) -> threading.Thread:
    """The round loop in a thread, over the fixture's coordinator, with the models built in-process."""
    cfg = ServerConfig.model_validate({"rounds": 1, "local_epochs": 0, "out": federation.out, "insecure": True,
                                       **settings})  # fmt: skip
    output = RunDir(cfg.out)
    output.prepare(force=False)
    driver = threading.Thread(
        target=run_federation, args=(cfg, federation.coordinator, output, InProcessModels(cfg.model))
    )
    driver.start()
    return driver


def test_hostile_inputs_are_refused_precisely_and_change_nothing(federation: Federation) -> None:
    stub = federation.stub
    a, b, hostile = join(stub, "honest_a", 10), join(stub, "honest_b", 30), join(stub, "hostile", 10)
    driver = start_driver(federation, min_clients=3, min_fit=2)
    _, model = fetch(stub, hostile)
    update_a, update_b = shifted(model, 1.0), shifted(model, 3.0)
    bystander = join(stub, "bystander", 10)  # joins a round that is already full: not chosen
    upload(stub, iter(messages(a, update_a, n=10)), timeout=30)

    def sends(msgs: list[pb.UpdateMessage]) -> Callable[[], object]:
        return lambda: upload(stub, iter(msgs), timeout=30)

    def edit_header(change: Callable[[pb.UpdateHeader], None], state: State | None = None) -> list[pb.UpdateMessage]:
        msgs = messages(hostile, state if state is not None else model)
        change(msgs[0].header)
        return msgs

    good = messages(hostile, model)
    renamed = {("x" + k if i == 0 else k): v for i, (k, v) in enumerate(model.items())}
    first = next(k for k, v in model.items() if is_float(v.dtype) and v.ndim > 1)
    reshaped = {k: (v.reshape(-1) if k == first else v) for k, v in model.items()}
    retyped = {k: (v.astype(np.float64) if k == first else v) for k, v in model.items()}
    nan, inf = shifted(model, 0.0), shifted(model, 0.0)
    nan[first].reshape(-1)[0], inf[first].reshape(-1)[-1] = float("nan"), float("inf")
    too_many = dict.fromkeys((f"m{i}" for i in range(65)), 1.0)
    bad_info = INFO.model_copy(update={"class_names": tuple(f"c{i}" for i in range(1001))})
    end = good[0].header.tensors.total_bytes
    past_end = pb.UpdateMessage(chunk=pb.Chunk(offset=end, data=b"x"))
    last = good[-1].chunk
    overlong_last = pb.UpdateMessage(chunk=pb.Chunk(offset=last.offset, data=last.data + b"extra"))
    forged_poll = pb.TaskRequest(session_id="forged")
    cases: dict[str, tuple[Callable[[], object], Code]] = {
        "forged session (upload)": (sends(messages("forged", model)), Code.UNAUTHENTICATED),
        "forged session (poll)": (lambda: next(iter(stub.GetTask(forged_poll))), Code.UNAUTHENTICATED),
        "forged session (leave)": (lambda: stub.Leave(pb.LeaveRequest(session_id="forged")), Code.UNAUTHENTICATED),
        "round that is not open": (sends(messages(hostile, model, round_number=2)), Code.FAILED_PRECONDITION),
        "hospital not chosen": (sends(messages(bystander, model)), Code.PERMISSION_DENIED),
        "second submission": (sends(messages(a, shifted(model, 100.0))), Code.ALREADY_EXISTS),
        "renamed tensor": (sends(messages(hostile, renamed)), Code.INVALID_ARGUMENT),
        "reshaped tensor": (sends(messages(hostile, reshaped)), Code.INVALID_ARGUMENT),
        "other dtype": (sends(messages(hostile, retyped)), Code.INVALID_ARGUMENT),
        "NaN": (sends(messages(hostile, nan)), Code.INVALID_ARGUMENT),
        "Inf": (sends(messages(hostile, inf)), Code.INVALID_ARGUMENT),
        "stream longer than the model": (sends([*good, past_end]), Code.RESOURCE_EXHAUSTED),
        "bytes past the announced end": (sends([*good[:-1], overlong_last]), Code.RESOURCE_EXHAUSTED),
        "header announcing too many bytes": (sends(edit_header(
            lambda h: setattr(h.tensors, "total_bytes", h.tensors.total_bytes * 4))), Code.RESOURCE_EXHAUSTED),
        "chunks out of order": (sends([good[0], good[2], good[1], *good[3:]]), Code.INVALID_ARGUMENT),
        "overlapping chunks": (sends([good[0], good[1], good[1], *good[2:]]), Code.INVALID_ARGUMENT),
        "stream cut short": (sends(good[:-1]), Code.INVALID_ARGUMENT),
        "no header": (sends(good[1:]), Code.INVALID_ARGUMENT),
        "two headers": (sends([good[0], *good]), Code.INVALID_ARGUMENT),
        "delta update": (
            sends(edit_header(lambda h: setattr(h, "kind", pb.UPDATE_KIND_DELTA))), Code.INVALID_ARGUMENT),
        "zero examples": (sends(messages(hostile, model, n=0)), Code.INVALID_ARGUMENT),
        "negative examples": (sends(messages(hostile, model, n=-5)), Code.INVALID_ARGUMENT),
        "more examples than declared": (sends(messages(hostile, model, n=11)), Code.INVALID_ARGUMENT),
        "non-finite metric": (sends(messages(hostile, model, metrics={"loss": float("nan")})), Code.INVALID_ARGUMENT),
        "too many metrics": (sends(messages(hostile, model, metrics=too_many)), Code.RESOURCE_EXHAUSTED),
        "huge metric name": (sends(messages(hostile, model, metrics={"x" * 1000: 1.0})), Code.RESOURCE_EXHAUSTED),
        "message over the 4 MiB limit": (sends([good[0], pb.UpdateMessage(chunk=pb.Chunk(
            offset=0, data=bytes(5 << 20)))]), Code.RESOURCE_EXHAUSTED),
        "privacy report with NaN epsilon": (sends(edit_header(lambda h: h.privacy.CopyFrom(pb.PrivacyReport(
            mechanism="local", clip=1, noise_multiplier=1, sampling_rate=1, steps=1, releases=1,
            epsilon=float("nan"), delta=1e-5)))), Code.INVALID_ARGUMENT),
        "privacy report of an unknown mechanism": (sends(edit_header(lambda h: h.privacy.CopyFrom(
            pb.PrivacyReport(mechanism="x" * 500)))), Code.RESOURCE_EXHAUSTED),
        "privacy report with delta 1": (sends(edit_header(lambda h: h.privacy.CopyFrom(pb.PrivacyReport(
            mechanism="dp_sgd", clip=1, noise_multiplier=1, sampling_rate=0.1, steps=3, releases=1,
            epsilon=2, delta=1)))), Code.INVALID_ARGUMENT),
        "join with 1001 classes": (lambda: join(stub, "hostile_2", 10, bad_info), Code.RESOURCE_EXHAUSTED),
        "join with a path as name": (lambda: join(stub, "../../etc/passwd"), Code.INVALID_ARGUMENT),
        "join inflating its sample count": (lambda: join(stub, "hostile_3", 10**9), Code.INVALID_ARGUMENT),
        "join with other classes": (
            lambda: join(stub, "hostile_4", 10, INFO.model_copy(update={"class_names": ("x", "y")})),
            Code.FAILED_PRECONDITION),
    }  # fmt: skip

    observed = {}
    for name, (attempt, _) in cases.items():
        observed[name] = status(attempt)
        round_number, _ = fetch(stub, b)  # the server still answers, with the same open round
        assert round_number == 1, name

    assert observed == {name: code for name, (_, code) in cases.items()}
    upload(stub, iter(messages(b, update_b, n=30)), timeout=30)
    stub.Leave(pb.LeaveRequest(session_id=hostile, reason="done"))
    driver.join(timeout=60)
    assert not driver.is_alive()
    history = [json.loads(line) for line in (federation.out / "history.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in history] == [["honest_a", "honest_b"]]
    final, _ = load_model(federation.out)
    expected = fedavg([(update_a, 10), (update_b, 30)])
    assert all(np.array_equal(final[k], expected[k]) for k in expected)


def test_an_upload_cut_half_way_frees_the_slot_and_the_retry_counts_once(federation: Federation) -> None:
    stub = federation.stub
    a, b = join(stub, "hospital_a", 10), join(stub, "hospital_b", 10)
    driver = start_driver(federation, min_clients=2)
    _, model = fetch(stub, a)
    update_a = shifted(model, 1.0)
    full = messages(a, update_a, chunk=4096)

    def cut_half_way() -> Iterator[pb.UpdateMessage]:
        yield from full[: len(full) // 2]
        raise ConnectionResetError("network cut")  # the client library cancels the call mid-stream

    coordinator = federation.coordinator

    def slot_free() -> bool:
        current = coordinator._round
        return current is None or "hospital_a" not in current.receiving

    cut = status(lambda: upload(stub, cut_half_way(), timeout=30))
    deadline = time.monotonic() + 10
    while (retried := status(lambda: upload(stub, iter(full), timeout=30))) == Code.UNAVAILABLE:
        # the coordinator had not yet seen the cut: wait until it frees the slot (it notifies), then retry
        with coordinator._cond:
            assert coordinator._cond.wait_for(slot_free, timeout=deadline - time.monotonic())
    again = status(lambda: upload(stub, iter(full), timeout=30))
    upload(stub, iter(messages(b, shifted(model, 3.0))), timeout=30)
    driver.join(timeout=60)

    assert (cut, retried, again) == (Code.UNKNOWN, Code.OK, Code.ALREADY_EXISTS)
    assert not driver.is_alive()
    history = [json.loads(line) for line in (federation.out / "history.jsonl").read_text().splitlines()]
    assert history[0]["clients"] == ["hospital_a", "hospital_b"] and history[0]["num_examples"] == 20
    final, _ = load_model(federation.out)
    expected = fedavg([(update_a, 10), (shifted(model, 3.0), 10)])
    assert all(np.array_equal(final[k], expected[k]) for k in expected)


def int8_messages(session: str, state: State, model: State, *, scale: float | None = None,
                  n: int = 10) -> list[pb.UpdateMessage]:  # fmt: skip
    """An int8 delta update of ``state`` against ``model``; ``scale`` replaces every tensor's scale."""
    encoded = encode_update(state, model, "int8")
    layout = encoded.layout
    if scale is not None:
        layout = replace(layout, tensors=tuple(replace(t, delta_scale=scale) if t.delta_scale else t
                                               for t in layout.tensors))  # fmt: skip
    header = pb.UpdateHeader(session_id=session, round=1, num_examples=n, kind=pb.UPDATE_KIND_DELTA,
                             tensors=layout_to_proto(layout))  # fmt: skip
    chunks = [pb.UpdateMessage(chunk=pb.Chunk(offset=o, data=d)) for o, d in encoded.chunks(200_000)]
    return [pb.UpdateMessage(header=header), *chunks]


def test_updates_that_would_poison_the_average_are_refused_and_the_run_keeps_the_honest_average(
    federation: Federation,
) -> None:
    stub = federation.stub
    a, b, hostile = join(stub, "honest_a", 10), join(stub, "honest_b", 30), join(stub, "hostile", 10)
    driver = start_driver(federation, min_clients=3, min_fit=2, update_encoding="int8")
    _, model = fetch(stub, hostile)
    flipped = {k: (-v if is_float(v.dtype) else v) for k, v in model.items()}  # BatchNorm statistics included
    poisoned = {
        "sign-flipped model (negative running variances)": messages(hostile, flipped),
        "int8 delta whose scale is finite but rebuilds beyond float32": int8_messages(
            hostile, shifted(model, 1.0), model, scale=1e37
        ),
    }

    observed = {what: status(lambda msgs=msgs: upload(stub, iter(msgs), timeout=30)) for what, msgs in poisoned.items()}
    upload(stub, iter(int8_messages(a, shifted(model, 1.0), model)), timeout=30)
    upload(stub, iter(messages(b, shifted(model, 3.0), n=30)), timeout=30)
    stub.Leave(pb.LeaveRequest(session_id=hostile, reason="done"))
    driver.join(timeout=60)

    assert observed == dict.fromkeys(poisoned, Code.INVALID_ARGUMENT)
    assert not driver.is_alive()
    final, _ = load_model(federation.out)
    assert all(np.isfinite(v).all() for v in final.values())
    history = [json.loads(line) for line in (federation.out / "history.jsonl").read_text().splitlines()]
    assert history[0]["clients"] == ["honest_a", "honest_b"]


def test_a_huge_name_gets_a_short_refusal_and_a_flood_of_them_a_few_log_lines(
    federation: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    stub = federation.stub
    caplog.set_level(logging.WARNING, logger="medfed.server")

    with pytest.raises(grpc.RpcError) as err:
        join(stub, "x" * 10_000)
    for _ in range(20):
        assert status(lambda: join(stub, "\n" + "y" * (3 << 20))) == Code.INVALID_ARGUMENT

    assert err.value.code() == Code.INVALID_ARGUMENT
    assert len(err.value.details()) < 200 and "(10000 characters)" in err.value.details()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 5 and all(len(line) < 400 and "\n" not in line for line in refusals)


def test_an_accepted_update_that_breaks_the_global_model_fails_its_round_not_the_federation(
    tmp_path: Path,
) -> None:
    """A real fed-server with a test set: one hospital's finite but enormous weights make the average
    give NaN on the test set. The round is recorded as failed, the last good model is kept, the run goes on
    (the coordinator exited 1 with "Input contains NaN" before)."""
    partition_to_folders(synthetic_dataset(num_classes=2, size=8), tmp_path / "data", clients=2, scheme="iid")
    procs = ProcessGroup(tmp_path / "logs")
    out = tmp_path / "run"
    try:
        port = start_server(procs, tmp_path, "--rounds", "2", "--min-clients", "2", "--local-epochs", "0",
                            "--test-data", str(tmp_path / "data" / "test"), "--out", str(out))  # fmt: skip
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
        stub = pb_grpc.FederationStub(channel)
        info = load_folder(tmp_path / "data" / "hospital_a").info
        honest, hostile = join(stub, "honest", 10, info), join(stub, "hostile", 10, info)
        sent: list[State] = []
        for round_number in (1, 2):
            _, model = fetch(stub, honest)
            fetch(stub, hostile)
            sent.append(model)
            huge = {k: (v * np.float32(1e30) if is_float(v.dtype) else v) for k, v in model.items()}
            upload(stub, iter(messages(honest, model, round_number=round_number)), timeout=30)
            poisoned = huge if round_number == 1 else model
            upload(stub, iter(messages(hostile, poisoned, round_number=round_number)), timeout=30)
        code = procs.procs["server"].wait(timeout=120)
        channel.close()
    finally:
        procs.stop_all()

    assert code == 0, procs.log("server")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert "not finite" in history[0]["failed"] and "accuracy" not in history[0]
    assert "failed" not in history[1] and np.isfinite(history[1]["loss"])
    assert all(np.array_equal(sent[0][k], sent[1][k]) for k in sent[0])  # round 2 got round 0's model again
    final, _ = load_model(out)
    assert all(np.array_equal(final[k], sent[0][k]) for k in final)  # honest updates were the model itself
