"""Real mutual-TLS handshakes on loopback, with certificates made in the test."""

import datetime as dt
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from medfed.client.connection import GrpcConnection, tls_failure
from medfed.client.node import HospitalNode
from medfed.client.probe import Probe
from medfed.client.protocol import NodeError
from medfed.client.trainer import Trainer
from medfed.common import pki
from medfed.common.data.folders import DatasetInfo, HospitalData, Split
from medfed.common.messages import ModelSpec, TrainSettings, UpdateHeader
from medfed.common.provenance.digests import update_digest
from medfed.common.provenance.signing import Signer, sign_update
from medfed.common.tensors import encode
from medfed.common.wire.convert import info_to_proto
from medfed.common.wire.options import channel_options
from medfed.common.wire.provenance import receipt_from_proto
from medfed.common.wire.stream import update_messages
from medfed.common.wire.tls import channel_credentials, server_credentials
from medfed.proto.v1 import federation_pb2 as pb
from medfed.proto.v1 import federation_pb2_grpc as pb_grpc
from medfed.server.audit_log import AuditLog
from medfed.server.auth import PeerAuthenticator
from medfed.server.coordinator import Coordinator
from medfed.server.rounds import Task
from medfed.server.servicer import create_server
from medfed.server.strategy.fedavg import FedAvg
from tests.helpers import run_cli, upload
from tests.tcp_proxy import TcpProxy

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(4, 4))
PAST = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=800)


@dataclass(frozen=True)
class Pki:
    root: Path

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.crt", self.root / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"


def _save(root: Path, name: str, key: object, cert: object) -> None:
    pki.write_private_key(root / f"{name}.key", key)  # type: ignore[arg-type]
    pki.write_public(root / f"{name}.crt", cert)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca = pki.make_ca()
    _save(root, "ca", ca_key, ca)
    pki.write_public(root / "crl.pem", pki.make_crl(ca_key, ca, {}))
    _save(root, "server", *pki.issue(ca_key, ca, "localhost", server_hosts=["localhost", "127.0.0.1"]))
    _save(root, "wrong_host_server", *pki.issue(ca_key, ca, "elsewhere.example", server_hosts=["elsewhere.example"]))
    for name in ("hospital_a", "hospital_b", "hospital_c", "hospital_d"):
        _save(root, name, *pki.issue(ca_key, ca, name))
    _save(root, "expired", *pki.issue(ca_key, ca, "hospital_a", now=PAST))
    other_key, other = pki.make_ca("another CA")
    _save(root, "other_ca", other_key, other)
    _save(root, "foreign", *pki.issue(other_key, other, "hospital_a"))
    return Pki(root)


@dataclass
class Live:
    coordinator: Coordinator
    port: int


@contextmanager
def serving(certs: Pki, server_cert: str = "server") -> Iterator[Live]:
    coordinator = Coordinator(data_info=INFO, allowed=frozenset({"hospital_a", "hospital_b", "hospital_c"}))
    cert, key = certs.cert(server_cert)
    server, port = create_server(
        coordinator, "127.0.0.1:0", credentials=server_credentials(cert, key, certs.ca),
        authenticator=PeerAuthenticator(pki.load_cert(certs.ca), certs.crl), poll_timeout=0.5,
    )  # fmt: skip
    server.start()
    try:
        yield Live(coordinator, port)
    finally:
        server.stop(grace=None).wait()


@pytest.fixture
def live(certs: Pki) -> Iterator[Live]:
    with serving(certs) as running:
        yield running


def stub(certs: Pki, port: int, name: str | None, ca: Path | None = None, target: str = "localhost",
         server_name: str | None = None) -> pb_grpc.FederationStub:  # fmt: skip
    root = (ca or certs.ca).read_bytes()
    if name is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    else:
        cert, key = certs.cert(name)
        credentials = channel_credentials(cert, key, ca or certs.ca)
    options = channel_options() + ([("grpc.ssl_target_name_override", server_name)] if server_name else [])
    return pb_grpc.FederationStub(grpc.secure_channel(f"{target}:{port}", credentials, options=options))


def join(s: pb_grpc.FederationStub, claimed: str = "") -> str:
    request = pb.JoinRequest(name=claimed, num_examples=5, data=info_to_proto(INFO))
    return s.Join(request, timeout=10).session_id


def refusal(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_a_hospital_joins_as_the_name_on_its_certificate(certs: Pki, live: Live) -> None:
    session = join(stub(certs, live.port, "hospital_a"))

    assert session and live.coordinator.hospitals() == ["hospital_a"]


def test_a_name_other_than_the_certificates_is_refused(certs: Pki, live: Live) -> None:
    err = refusal(lambda: join(stub(certs, live.port, "hospital_a"), claimed="hospital_b"))

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "certificate is for 'hospital_a'" in err.details()
    assert live.coordinator.hospitals() == []


@pytest.mark.parametrize("client", [None, "foreign", "expired"], ids=["no certificate", "another CA", "expired"])
def test_the_handshake_refuses_bad_client_certificates(certs: Pki, live: Live, client: str | None) -> None:
    err = refusal(lambda: join(stub(certs, live.port, client)))

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert live.coordinator.hospitals() == []


def test_a_hospital_the_coordinator_refuses_stops_within_30_seconds_with_a_reason(certs: Pki, live: Live) -> None:
    train = Split(np.zeros((5, 1, 4, 4), dtype=np.uint8), np.zeros(5, dtype=np.int64))
    data = HospitalData(Path("h"), "hospital_a", INFO, {"train": train})
    cert, key = certs.cert("foreign")  # issued by another CA; this hospital trusts the federation's CA
    server = f"localhost:{live.port}"
    connection = GrpcConnection(
        stub(certs, live.port, "foreign"), server=server, max_wait=120, tls=True,
        diagnose=Probe(server, cert, key, certs.ca).diagnose,
    )  # fmt: skip
    node = HospitalNode(
        connection, data, Trainer(data, torch.device("cpu"), name="hospital_a"), name="hospital_a", max_wait=120
    )
    started = time.monotonic()

    with pytest.raises(NodeError, match="refused this hospital's certificate"):
        node.run()
    assert time.monotonic() - started < 30


def test_a_revoked_certificate_is_refused_at_its_next_call(certs: Pki, live: Live) -> None:
    b = stub(certs, live.port, "hospital_b")
    session = join(b)
    ca_key, ca = pki.load_key(certs.root / "ca.key"), pki.load_cert(certs.ca)
    serial = pki.load_cert(certs.cert("hospital_b")[0]).serial_number
    original = certs.crl.read_bytes()
    try:
        pki.write_public(certs.crl, pki.make_crl(ca_key, ca, {serial: dt.datetime.now(dt.timezone.utc)}))

        err = refusal(lambda: next(b.GetTask(pb.TaskRequest(session_id=session), timeout=10)))
    finally:
        certs.crl.write_bytes(original)

    assert (
        err.code() == grpc.StatusCode.PERMISSION_DENIED and "hospital_b" in err.details() and "revoked" in err.details()
    )


def test_only_hospitals_on_the_allow_list_join(certs: Pki, live: Live) -> None:
    err = refusal(lambda: join(stub(certs, live.port, "hospital_d")))

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "--allow" in err.details()


def test_a_session_cannot_be_used_with_another_hospitals_certificate(certs: Pki, live: Live) -> None:
    session = join(stub(certs, live.port, "hospital_a"))

    err = refusal(
        lambda: next(stub(certs, live.port, "hospital_b").GetTask(pb.TaskRequest(session_id=session), timeout=10))
    )

    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_coordinators_host_name_is_verified(certs: Pki) -> None:
    with serving(certs, server_cert="wrong_host_server") as live:
        err = refusal(lambda: join(stub(certs, live.port, "hospital_a")))
        reason = tls_failure(err.details(), f"localhost:{live.port}")

        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert reason is not None and reason.startswith("host name mismatch")
        assert join(stub(certs, live.port, "hospital_a", target="127.0.0.1", server_name="elsewhere.example"))


def test_a_coordinator_certificate_from_an_unknown_ca_is_refused(certs: Pki, live: Live) -> None:
    err = refusal(lambda: join(stub(certs, live.port, "hospital_a", ca=certs.root / "other_ca.crt")))

    reason = tls_failure(err.details(), f"localhost:{live.port}")
    assert reason is not None and reason.startswith("unknown CA")


def test_fed_client_reports_authentication_failures_in_one_line(certs: Pki, live: Live, tmp_path: Path) -> None:
    from medfed.common.data.folders import save_folder

    save_folder(tmp_path / "h", "h", INFO, {"train": (np.zeros((4, 4, 4), dtype=np.uint8), np.array([0, 1, 0, 1]))})
    base = ["--data", str(tmp_path / "h"), "--server", f"localhost:{live.port}", "--max-wait", "120"]
    cert, key = certs.cert("expired")
    foreign_cert, foreign_key = certs.cert("foreign")  # a hospital of another federation, trusting its own CA

    expired = run_cli("medfed.client", *base, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(certs.ca))
    unknown_ca = run_cli(
        "medfed.client", *base, "--tls-cert", str(foreign_cert), "--tls-key", str(foreign_key),
        "--tls-ca", str(certs.root / "other_ca.crt"),
    )  # fmt: skip

    assert expired.returncode == 2 and "expired on" in expired.stderr
    assert unknown_ca.returncode == 1 and "fed-client: error: unknown CA" in unknown_ca.stderr
    for result in (expired, unknown_ca):
        assert "Traceback" not in result.stderr
        assert sum(line.startswith("fed-client: error:") for line in result.stderr.splitlines()) == 1


def test_the_probe_names_a_refusal_and_never_mistakes_an_outage_or_a_healthy_server(certs: Pki, live: Live) -> None:
    tls_server = f"localhost:{live.port}"
    cert, key = certs.cert("hospital_a")
    plaintext = Coordinator(data_info=INFO)
    insecure, insecure_port = create_server(plaintext, "127.0.0.1:0")
    insecure.start()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: nobody there
        nobody = f"127.0.0.1:{unused.getsockname()[1]}"
        try:
            refused = Probe(tls_server).diagnose()
            assert refused is not None and refused.final and "requires TLS" in refused.text
            assert Probe(tls_server, cert, key, certs.ca).diagnose() is None
            assert Probe(f"127.0.0.1:{insecure_port}").diagnose() is None
            assert Probe(nobody, cert, key, certs.ca).diagnose() is None
            assert Probe(nobody).diagnose() is None
        finally:
            insecure.stop(grace=None).wait()


def test_a_certificate_without_the_server_name_is_reported_for_the_name_checked(
    certs: Pki, live: Live, tmp_path: Path
) -> None:
    from medfed.common.data.folders import save_folder

    save_folder(tmp_path / "h", "h", INFO, {"train": (np.zeros((4, 4, 4), dtype=np.uint8), np.array([0, 1, 0, 1]))})
    cert, key = certs.cert("hospital_a")

    result = run_cli(
        "medfed.client", "--data", str(tmp_path / "h"), "--server", f"127.0.0.1:{live.port}",
        "--server-name", "coordinator.example.org", "--tls-cert", str(cert), "--tls-key", str(key),
        "--tls-ca", str(certs.ca), "--max-wait", "120",
    )  # fmt: skip

    errors = [line for line in result.stderr.splitlines() if line.startswith("fed-client: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "not issued for coordinator.example.org" in errors[0] and "127.0.0.1" not in errors[0]


def test_a_connection_accepted_and_closed_is_an_outage_not_a_refusal(certs: Pki, live: Live) -> None:
    """What a load balancer in front of a coordinator that is down does; a TLS coordinator hanging up on
    plaintext looks the same on the wire and is still told apart (it answers TLS)."""
    cert, key = certs.cert("hospital_a")
    with TcpProxy() as proxy:
        outages = [Probe(f"127.0.0.1:{proxy.port}").diagnose(),
                   Probe(f"localhost:{proxy.port}", cert, key, certs.ca).diagnose()]  # fmt: skip
    refused = Probe(f"localhost:{live.port}").diagnose()

    assert all(d is not None and not d.final and "accepted the connection and closed it" in d.text for d in outages)
    assert proxy.closed_connections == 3  # the plaintext probe looked twice: a preface, then a ClientHello
    assert refused is not None and refused.final and "requires TLS" in refused.text


def test_an_update_signed_with_another_key_than_its_certificates_is_refused_and_a_signed_one_gets_a_receipt(
    certs: Pki, tmp_path: Path
) -> None:
    server_cert, server_key = certs.cert("server")
    audit = AuditLog(tmp_path / "audit.jsonl", "fed-tls", Signer(pki.load_key(server_key), pki.load_cert(server_cert)))
    coordinator = Coordinator(data_info=INFO, federation_id="fed-tls", receipts=audit)
    server, port = create_server(
        coordinator, "127.0.0.1:0", credentials=server_credentials(server_cert, server_key, certs.ca),
        authenticator=PeerAuthenticator(pki.load_cert(certs.ca), certs.crl), poll_timeout=0.5,
    )  # fmt: skip
    server.start()
    try:
        a = stub(certs, port, "hospital_a")
        session = join(a)
        model = {"w": np.zeros(3, dtype=np.float32)}
        task = Task(1, 1, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(model))
        coordinator.open_round(task, ["hospital_a"], FedAvg().begin(model))
        update = encode({"w": np.ones(3, dtype=np.float32)})
        digest = update_digest("fed-tls", 1, 5, update.layout, update.buffer, delta=False)

        def send(signature: bytes) -> pb.SubmitReply:
            header = UpdateHeader(session, 1, 5, {}, update.layout, signature=signature)
            return upload(a, update_messages(header, update), timeout=10)

        other = Signer(pki.load_key(certs.cert("hospital_b")[1]), pki.load_cert(certs.cert("hospital_b")[0]))
        forged, unsigned = refusal(lambda: send(sign_update(other, digest))), refusal(lambda: send(b""))
        own_key, own_cert = pki.load_key(certs.cert("hospital_a")[1]), pki.load_cert(certs.cert("hospital_a")[0])
        reply = send(sign_update(Signer(own_key, own_cert), digest))
    finally:
        server.stop(grace=None).wait()

    assert forged.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not verify with the key of the certificate that sent it" in forged.details()
    assert unsigned.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not signed" in unsigned.details()
    receipt = receipt_from_proto(reply.receipt)
    assert receipt.update == digest.hex() and receipt.hospital == "hospital_a" and receipt.round == 1
    assert receipt.problem(pki.load_cert(certs.ca)) is None
    outcome = coordinator.close_round()
    assert [c.name for c in outcome.contributions] == ["hospital_a"] and len(outcome.refused) == 2
