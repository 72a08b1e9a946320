"""The live view: the monitor's states and events, the status endpoint's token, headers and JSON, and
the Prometheus text."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from medfed.common import pki
from medfed.common.config import build_config
from medfed.common.errors import ConfigError
from medfed.common.messages import PrivacyReport
from medfed.common.tensors import layout_of
from medfed.server.auth import PeerAuthenticator
from medfed.server.config import ServerConfig
from medfed.server.coordinator import Coordinator
from medfed.server.history import RoundRecord, TestResult
from medfed.server.live.monitor import Monitor
from medfed.server.live.web import Dashboard
from tests.helpers import wait_until
from tests.unit.server.test_coordinator import INFO, open_round, update

TOKEN = "sixteen-or-more-chars"


def record(round_number: int, clients: list[str], metrics: dict[str, dict[str, float]], accuracy: float) -> RoundRecord:
    test = TestResult(1.0 - accuracy, accuracy, 0.9, {"a": 1.0, "b": 0.0}, 10, [[5, 0], [3, 2]])
    return RoundRecord(round_number, clients, 20, 1.5, 100, 100, None, None, metrics, [], test=test)


def test_a_hospitals_state_follows_its_round_and_the_phase_follows_the_hospitals() -> None:
    coordinator = Coordinator(data_info=INFO)
    monitor = coordinator.monitor
    session = coordinator.join("hospital_a", 10, INFO)
    states = lambda: {h.name: h.state for h in monitor.snapshot().hospitals}  # noqa: E731
    assert states() == {"hospital_a": "joined"}

    open_round(coordinator, 1, ["hospital_a"])
    monitor.round_opened(1, ["hospital_a"], 60)
    task = coordinator.next_instruction(session, timeout=0)
    assert states() == {"hospital_a": "downloading"} and monitor.snapshot().phase == "sending"
    monitor.downloaded("hospital_a", task.payload.layout.total_bytes)  # what the servicer says once it streamed
    assert states() == {"hospital_a": "training"} and monitor.snapshot().phase == "training"
    with coordinator.begin_update(session, 1, 10, {"val_accuracy": 0.75}, layout_of(update(1.0))) as pending:
        assert states() == {"hospital_a": "uploading"} and monitor.snapshot().phase == "receiving"
        pending.commit(update(1.0))
    status = monitor.snapshot()
    (hospital,) = status.hospitals
    assert (hospital.state, hospital.rounds, hospital.metrics) == ("reported", 1, {"val_accuracy": 0.75})
    assert hospital.bytes_down == task.payload.layout.total_bytes and hospital.bytes_up > 0
    assert status.deadline is not None and status.deadline - status.now == pytest.approx(60, abs=5)

    coordinator.revoke({"hospital_a": "the certificate of 'hospital_a' has been revoked"})
    (hospital,) = monitor.snapshot().hospitals
    assert hospital.state == "refused" and "PERMISSION_DENIED" in hospital.detail and "revoked" in hospital.detail
    assert monitor.snapshot().refusals == {"PERMISSION_DENIED": 1}


def test_a_dp_hospitals_training_metrics_never_reach_the_view() -> None:
    monitor = Monitor()
    monitor.joined("private", 10)
    monitor.joined("open", 10)
    report = PrivacyReport("local", 1.0, 1.0, 1.0, 1, 1, 2.5, 1e-5)
    monitor.reported("private", 10, {"val_accuracy": 0.6, "train_loss": 0.1}, report.epsilon)
    monitor.reported("open", 10, {"val_accuracy": 0.8}, None)
    metrics = {"private": {"val_accuracy": 0.6}, "open": {"val_accuracy": 0.8}}
    monitor.round_done(record(1, ["private", "open"], metrics, 0.7))

    status = monitor.snapshot()
    views = {h.name: h for h in status.hospitals}
    assert views["private"].metrics == {} and views["private"].dp and views["private"].epsilon == 2.5
    assert views["open"].metrics == {"val_accuracy": 0.8}
    (point,) = status.rounds
    assert point.hospital_val_accuracy == {"open": 0.8} and point.epsilon == 2.5
    assert status.confusion_matrix == [[5, 0], [3, 2]] and status.rounds_completed == 1


def test_a_refusal_repeated_by_one_peer_is_counted_on_one_event() -> None:
    monitor = Monitor(max_events=5)
    monitor.joined("hospital_a", 10)
    for _ in range(1000):
        monitor.refused("hostile", "join", "INVALID_ARGUMENT", "hospital name must be 1-64 letters")
    events = monitor.snapshot().events
    assert [e.kind for e in events] == ["join", "refused"] and events[1].count == 1000
    assert monitor.snapshot().refusals == {"INVALID_ARGUMENT": 1000}


def test_a_resumed_run_shows_the_rounds_before_the_restart() -> None:
    monitor = Monitor()
    monitor.restore([record(1, ["a"], {}, 0.5), record(2, ["a"], {}, 0.6)])
    status = monitor.snapshot()
    assert [p.round for p in status.rounds] == [1, 2] and status.rounds_completed == 2 and status.events == []


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    monitor = Monitor()
    monitor.configure(federation_id="f00d", strategy="fedavg", total_rounds=3, privacy="none")
    monitor.joined("hospital_<b>", 10)
    monitor.round_done(record(1, ["hospital_<b>"], {}, 0.625))
    server = Dashboard(monitor, "127.0.0.1:0", token=TOKEN)
    server.start()
    yield server
    server.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


@pytest.mark.parametrize("path", ["", "api/status", "metrics", "dashboard.js"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-but-long-enough"}, {"Cookie": "medfed_dashboard=x"}]
)
def test_a_wrong_or_missing_token_gets_401_and_nothing_else(
    dashboard: Dashboard, path: str, headers: dict[str, str]
) -> None:
    code, body, _ = get(dashboard.url + path, headers)
    assert (code, body) == (401, b"")


def test_the_status_endpoint_answers_with_the_token(dashboard: Dashboard) -> None:
    code, body, headers = get(dashboard.url + "api/status", {"Authorization": f"Bearer {TOKEN}"})
    status = json.loads(body)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert status["format"] == "medfed-status/1" and status["federation_id"] == "f00d"
    assert [h["name"] for h in status["hospitals"]] == ["hospital_<b>"]
    assert status["rounds"][0]["accuracy"] == 0.625 and status["total_rounds"] == 3
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"


def test_the_page_opened_with_the_token_keeps_the_browser_signed_in_by_cookie(dashboard: Dashboard) -> None:
    code, body, headers = get(dashboard.url + f"?token={TOKEN}")
    assert code == 200 and b"dashboard.js" in body
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert get(dashboard.url + "api/status", {"Cookie": cookie})[0] == 200
    assert get(dashboard.url + "dashboard.js", {"Cookie": cookie})[0] == 200


def test_only_get_is_served(dashboard: Dashboard) -> None:
    request = urllib.request.Request(dashboard.url + "api/status", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405


def test_prometheus_metrics_parse_and_carry_the_federation(dashboard: Dashboard) -> None:
    code, body, headers = get(dashboard.url + "metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("medfed_rounds_completed_total", ())] == 1
    assert samples[("medfed_test_accuracy", ())] == 0.625
    assert samples[("medfed_hospitals", (("state", "joined"),))] == 1
    assert samples[("medfed_round_duration_seconds_count", ())] == 1
    assert samples[("medfed_round_duration_seconds_bucket", (("le", "2"),))] == 1
    assert samples[("medfed_phase", (("phase", "starting"),))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0


def test_a_dashboard_other_machines_can_reach_needs_a_token() -> None:
    base = {"insecure": True}
    with pytest.raises(ConfigError, match="--dashboard-token"):
        build_config(ServerConfig, {}, {**base, "dashboard_address": "0.0.0.0:8080"})
    assert build_config(ServerConfig, {}, {**base, "dashboard_address": "0.0.0.0:8080", "dashboard_token": TOKEN})
    assert build_config(ServerConfig, {}, {**base, "dashboard_address": "off"}).dashboard_address is None
    tls = {"tls_cert": "s.crt", "tls_key": "s.key", "tls_ca": "ca.crt"}  # operators' certificates instead
    assert build_config(ServerConfig, {}, {**tls, "dashboard_address": "0.0.0.0:8080"}).dashboard_token is None


def test_connections_beyond_the_limit_are_closed_and_the_slots_come_back() -> None:
    import socket

    server = Dashboard(Monitor(), "127.0.0.1:0", max_connections=2)
    server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]

        def turned_away() -> bool:
            """The server takes the two idle connections in its own time; then a third gets no answer."""
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as third:
                try:
                    third.sendall(b"GET /api/status HTTP/1.0\r\n\r\n")
                    return third.recv(100) == b""
                except ConnectionResetError:
                    return True

        wait_until(turned_away, 10, lambda: "a third connection was still served")
        for each in idle:
            each.close()

        def served() -> bool:
            """Until the server has seen both idle connections close, a new one may still be turned away."""
            try:
                return get(server.url + "api/status")[0] == 200
            except ConnectionError:  # http.client.RemoteDisconnected among them
                return False

        wait_until(served, 10, lambda: "the slots did not come back")
    finally:
        server.close()


def test_without_a_token_a_tls_dashboard_serves_operators_certificates_only(tmp_path: Path) -> None:
    import ssl

    ca_key, ca = pki.make_ca()
    pki.write_public(tmp_path / "ca.crt", ca)
    for name, kind in (("server", "server"), ("ops", "admin"), ("hospital_a", "hospital")):
        key, cert = pki.issue(ca_key, ca, name, server_hosts=["127.0.0.1"] if kind == "server" else None,
                              admin=kind == "admin")  # fmt: skip
        pki.write_private_key(tmp_path / f"{name}.key", key)
        pki.write_public(tmp_path / f"{name}.crt", cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(tmp_path / "ca.crt")
    server = Dashboard(Monitor(), "127.0.0.1:0", tls=context, operator=PeerAuthenticator(ca, None).operator)
    server.start()

    def fetch(who: str | None) -> int:
        client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        if who is not None:
            client.load_cert_chain(tmp_path / f"{who}.crt", tmp_path / f"{who}.key")
        try:
            with urllib.request.urlopen(server.url + "api/status", timeout=10, context=client) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as err:
            assert err.read() == b""
            return err.code
        except (urllib.error.URLError, ssl.SSLError, ConnectionResetError):
            return 0  # the handshake refused it

    try:
        assert server.url.startswith("https://") and server.operators_only
        assert fetch("ops") == 200
        assert fetch("hospital_a") == 403
        assert fetch(None) == 0
    finally:
        server.close()
