"""fed-admin against a real TLS federation: status and hospitals, remove, extend and stop; the admin
role comes from the certificate (fed-certs admin) and works in one direction only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest

from medfed.common.data.folders import DatasetInfo
from medfed.common.data.partition import partition_to_folders
from medfed.common.wire.convert import info_to_proto
from medfed.common.wire.options import channel_options
from medfed.common.wire.proto import pb, pb_grpc
from medfed.common.wire.tls import channel_credentials
from medfed.tools.local_run import ProcessGroup
from tests.helpers import run_cli, start_server, synthetic_dataset, wait_for_log
from tests.integration.test_federation import make_pki, start_hospitals


def admin(pki: Path, port: int, *args: str, name: str = "ops") -> tuple[int, str, str]:
    files = [
        "--tls-cert",
        str(pki / f"{name}.crt"),
        "--tls-key",
        str(pki / f"{name}.key"),
        "--tls-ca",
        str(pki / "ca.crt"),
    ]
    result = run_cli("medfed.tools.admin", "--server", f"127.0.0.1:{port}", *files, *args, timeout=60)
    return result.returncode, result.stdout, result.stderr


def channel(pki: Path, port: int, name: str) -> grpc.Channel:
    credentials = channel_credentials(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt")
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=channel_options())


def test_an_operator_follows_removes_extends_and_stops_a_run(tmp_path: Path, procs: ProcessGroup) -> None:
    partition_to_folders(synthetic_dataset(num_classes=4), tmp_path / "data", clients=3, scheme="iid", seed=0)
    pki, out = tmp_path / "pki", tmp_path / "run"
    tls = make_pki(pki)
    assert run_cli("medfed.tools.certs", "admin", "--dir", str(pki), "--name", "ops").returncode == 0
    port = start_server(procs, tmp_path, *tls, "--rounds", "300", "--min-clients", "3", "--min-fit", "2",
                        "--out", str(out), "--dashboard-address", "off")  # fmt: skip
    start_hospitals(procs, tmp_path / "data", port, pki)
    wait_for_log(procs, "server", "round 2/300")

    code, text, err = admin(pki, port, "status")
    assert code == 0 and "of 300" in text, err
    counts = re.findall(r"(\d+) [a-z]+", text.splitlines()[2].removeprefix("hospitals: "))
    assert sum(map(int, counts)) == 3, text
    code, text, err = admin(pki, port, "hospitals")
    names = [line.split()[0] for line in text.splitlines()[1:]]
    assert code == 0 and names == ["hospital_a", "hospital_b", "hospital_c"], text + err

    # The role is the certificate's, one way only: a hospital's cannot command, an operator's cannot join.
    with channel(pki, port, "hospital_a") as hospital, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.AdminStub(hospital).Stop(pb.StopRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "fed-certs admin" in refused.value.details()
    info = DatasetInfo(dataset="synthetic", channels=1, class_names=("c0", "c1", "c2", "c3"), image_size=(12, 12))
    with channel(pki, port, "ops") as operator, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.FederationStub(operator).Join(pb.JoinRequest(num_examples=5, data=info_to_proto(info)), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "operator" in refused.value.details()

    code, text, err = admin(pki, port, "remove", "hospital_c", "--reason", "checking a complaint")
    assert code == 0 and "fed-certs revoke --name hospital_c" in text, err
    assert procs.procs["hospital_c"].wait(timeout=60) != 0
    assert "removed by the operator ops: checking a complaint" in procs.log("hospital_c")
    code, _, err = admin(pki, port, "remove", "nobody")
    assert code == 3 and "NOT_FOUND" in err and len(err.strip().splitlines()) == 1

    code, _, err = admin(pki, port, "extend", "--rounds", "1")
    assert code == 3 and "INVALID_ARGUMENT" in err
    code, text, err = admin(pki, port, "extend", "--rounds", "500")
    assert code == 0 and "500 rounds instead of 300" in text, err
    wait_for_log(procs, "server", "/500: 2 hospitals")
    code, text, err = admin(pki, port, "status", "--json")
    assert code == 0, err
    status = json.loads(text)
    assert status["total_rounds"] == 500 and status["hospitals"][2]["state"] == "refused"

    code, text, err = admin(pki, port, "stop", "--reason", "enough for today")
    assert code == 0 and "stopped by the operator ops: enough for today" in text, err
    codes = {name: procs.procs[name].wait(timeout=60) for name in ("server", "hospital_a", "hospital_b")}
    assert codes == {"server": 0, "hospital_a": 0, "hospital_b": 0}, procs.tail("server", 10)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    removed_at = next(r["round"] for r in history if "hospital_c" not in r["clients"])
    assert all("hospital_c" not in r["clients"] for r in history if r["round"] >= removed_at)
    assert json.loads((out / "removed.json").read_text())["hospital_c"].startswith("removed by the operator ops")
