"""Secure aggregation with real processes over mutual TLS: the final model of a secure run matches the
plain run's within the quantization bound, and the coordinator never received a plain update."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medfed.common.data.partition import partition_to_folders
from medfed.server.run_dir import load_model
from medfed.tools.local_run import ProcessGroup
from tests.helpers import run_cli, start_server, synthetic_dataset
from tests.integration.test_federation import make_pki, start_hospitals


def federate(procs: ProcessGroup, tmp: Path, tls: list[str], out: Path, *extra: str) -> None:
    start_server(procs, tmp, *tls, "--rounds", "2", "--min-clients", "3", "--seed", "0", "--out", str(out),
                 "--test-data", str(tmp / "data" / "test"), "--dashboard-address", "off", *extra)  # fmt: skip
    start_hospitals(procs, tmp / "data", int((tmp / "server.port").read_text()), tmp / "pki")
    codes = procs.wait_all(timeout=240)
    assert set(codes.values()) == {0}, {name: procs.tail(name, 8) for name in codes}
    (tmp / "server.port").unlink()


def test_a_secure_run_ends_with_the_plain_runs_model_within_the_quantization_bound(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    partition_to_folders(synthetic_dataset(num_classes=4), tmp_path / "data", clients=3, scheme="iid", seed=0)
    tls = make_pki(tmp_path / "pki")
    federate(procs, tmp_path, tls, tmp_path / "plain")
    secure_procs = ProcessGroup(tmp_path / "secure-logs")
    try:
        federate(secure_procs, tmp_path, tls, tmp_path / "secure", "--secure-aggregation", "--secure-clip", "10")
    finally:
        secure_procs.stop_all()

    plain, _ = load_model(tmp_path / "plain")
    secure, _ = load_model(tmp_path / "secure")
    assert plain.keys() == secure.keys()
    floats = [k for k in plain if plain[k].dtype.kind == "f"]
    worst = max(float(np.abs(plain[k].astype(np.float64) - secure[k]).max()) for k in floats)
    assert worst < 1e-4, worst  # two rounds: each aggregate within 3 / (2 * 2^31 / 10) of FedAvg's, then retrained
    for k in set(plain) - set(floats):  # integer tensors (BatchNorm's batch counters) stay the first model's
        assert np.array_equal(secure[k], np.zeros_like(secure[k])), k
    history = [json.loads(line) for line in (tmp_path / "secure" / "history.jsonl").read_text().splitlines()]
    assert [sorted(r["clients"]) for r in history] == [["hospital_a", "hospital_b", "hospital_c"]] * 2
    assert all(r["bytes_up"] == 3 * 4 * sum(np.asarray(v).size for k, v in plain.items()
                                            if np.asarray(v).dtype.kind == "f") for r in history)  # fmt: skip
    logs = "".join(secure_procs.log(h) for h in ("hospital_a", "hospital_b", "hospital_c"))
    assert logs.count("securely aggregated with 2 other hospital(s)") == 6
    # Both runs' chains verify; the secure one credits each hospital with the masked vector it signed.
    ca = str(tmp_path / "pki" / "ca.crt")
    for run in ("plain", "secure"):
        verified = run_cli("medfed.tools.audit.cli", "verify", str(tmp_path / run), "--ca", ca)
        assert verified.returncode == 0 and verified.stdout.strip().endswith("verified: " + str(tmp_path / run))
    chain = [json.loads(line) for line in (tmp_path / "secure" / "audit.jsonl").read_text().splitlines()]
    assert [r["secure"] for r in chain if r["kind"] == "round"] == [True, True]
    federation = hashlib.sha256(chain[0]["federation_id"].encode()).hexdigest()[:16]
    kept = tmp_path / "data" / "hospital_b" / "medfed-state" / f"receipts-{federation}.jsonl"
    proved = run_cli("medfed.tools.audit.cli", "receipt", str(kept), "--run", str(tmp_path / "secure"), "--ca", ca)
    assert proved.returncode == 0 and proved.stdout.count("credited in the run's chain") == 2, proved.stdout


def test_secure_aggregation_refuses_what_would_need_individual_updates() -> None:
    for flags, reason in (
        (["--insecure"], "needs TLS"),
        (["--tls-cert", "s.crt", "--tls-key", "s.key", "--tls-ca", "ca.crt", "--strategy", "median"], "median"),
        (["--tls-cert", "s.crt", "--tls-key", "s.key", "--tls-ca", "ca.crt", "--update-encoding", "int8"], "int8"),
    ):
        result = run_cli("medfed.server", "--secure-aggregation", *flags, "--rounds", "1")
        assert result.returncode == 2 and reason in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_hospital_that_drops_before_its_keys_leaves_the_others_securely_aggregated(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    partition_to_folders(synthetic_dataset(num_classes=4), tmp_path / "data", clients=3, scheme="iid", seed=0)
    tls = make_pki(tmp_path / "pki")
    port = start_server(procs, tmp_path, *tls, "--rounds", "1", "--min-clients", "3", "--out", str(tmp_path / "run"),
                        "--dashboard-address", "off", "--secure-aggregation", "--secure-threshold", "2",
                        "--secure-stage-timeout", "5")  # fmt: skip
    refusing = tmp_path / "policy.toml"
    refusing.write_text('allowed_models = ["resnet18"]\n')  # hospital_c refuses the task before sending any key
    for name in ("hospital_a", "hospital_b", "hospital_c"):
        pki = tmp_path / "pki"
        policy = ["--policy", str(refusing)] if name == "hospital_c" else []
        procs.start(name, "medfed.client", "--data", str(tmp_path / "data" / name), "--server", f"127.0.0.1:{port}",
                    "--tls-cert", str(pki / f"{name}.crt"), "--tls-key", str(pki / f"{name}.key"), "--tls-ca",
                    str(pki / "ca.crt"), "--threads", "1", "--no-progress", *policy)  # fmt: skip
    codes = procs.wait_all(timeout=180)
    assert codes["server"] == 0 and codes["hospital_a"] == codes["hospital_b"] == 0, procs.tail("server", 10)
    assert codes["hospital_c"] != 0 and "allowed_models" in procs.log("hospital_c")
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert sorted(record["clients"]) == ["hospital_a", "hospital_b"] and record.get("failed") is None
    assert "no keys from hospital_c" in procs.log("server")
    assert "securely aggregated with 1 other hospital(s)" in procs.log("hospital_a")
