"""Differential privacy through real fed-server and fed-client processes: ε reaches history.jsonl."""

import json
from pathlib import Path

import pytest

from medfed.common.data.partition import partition_to_folders
from medfed.tools.local_run import ProcessGroup
from tests.helpers import start_server, synthetic_dataset


@pytest.fixture
def data(tmp_path: Path) -> Path:
    partition_to_folders(
        synthetic_dataset(num_classes=3, size=8, per_class=(40, 6, 20)), tmp_path / "data", clients=3, scheme="iid"
    )
    return tmp_path / "data"


def hospital(procs: ProcessGroup, data: Path, name: str, port: int, *flags: str) -> None:
    procs.start(
        name, "medfed.client", "--data", str(data / name), "--server", f"127.0.0.1:{port}", "--insecure",
        "--threads", "1", "--no-progress", "--max-wait", "30", *flags,
    )  # fmt: skip


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_local_dp_and_dp_sgd_report_a_growing_epsilon_and_a_spent_budget_stops_a_hospital(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    out = tmp_path / "run"
    port = start_server(
        procs, tmp_path, "--model", "cnn_gn", "--rounds", "3", "--min-clients", "3", "--min-fit", "1",
        "--batch-size", "16", "--out", str(out), "--test-data", str(data / "test"), "--round-timeout", "120",
        "--dp-local", "--dp-clip", "0.5", "--dp-noise-multiplier", "1.1",
    )  # fmt: skip
    hospital(procs, data, "hospital_a", port, "--dp-clip", "1.0", "--dp-noise-multiplier", "1.1")
    hospital(procs, data, "hospital_b", port, "--dp-sgd", "--dp-clip", "1.0", "--dp-noise-multiplier", "1.0")
    hospital(procs, data, "hospital_c", port, "--dp-target-epsilon", "12")  # one round of σ = 1.1 costs 9.6

    codes = procs.wait_all(timeout=240)

    assert codes == {"server": 0, "hospital_a": 0, "hospital_b": 0, "hospital_c": 0}, procs.log("server")
    records = history(out)
    assert [sorted(r["clients"]) for r in records] == [
        ["hospital_a", "hospital_b", "hospital_c"], ["hospital_a", "hospital_b"], ["hospital_a", "hospital_b"],
    ]  # fmt: skip
    reports = [r["privacy"]["hospitals"] for r in records]
    assert reports[0]["hospital_a"]["mechanism"] == "local" and reports[0]["hospital_a"]["clip"] == 1.0
    assert reports[0]["hospital_b"]["mechanism"] == "dp_sgd" and reports[0]["hospital_b"]["sampling_rate"] < 1
    assert reports[0]["hospital_c"]["clip"] == 0.5  # no flags of its own: it applied the coordinator's request
    for name in ("hospital_a", "hospital_b"):
        epsilons = [r[name]["epsilon"] for r in reports]
        assert 0 < epsilons[0] < epsilons[1] < epsilons[2], epsilons
    assert all(r["epsilon"] == max(h["epsilon"] for h in r["privacy"]["hospitals"].values()) for r in records)
    assert "above --dp-target-epsilon 12" in procs.log("hospital_c")
    assert "privacy budget reached" in procs.log("server")
    final = json.loads((out / "model.json").read_text())["privacy"]["hospitals"]["hospital_a"]
    assert final == {**reports[2]["hospital_a"], "releases": 3, "rounds": 3}
    assert set(final) >= {"mechanism", "clip", "noise_multiplier", "rounds", "sampling_rate", "epsilon", "delta"}
    ledger = json.loads((data / "hospital_a" / "privacy-ledger.json").read_text())
    assert [e["round"] for e in ledger["entries"]] == [1, 2, 3]


def test_central_dp_with_adaptive_clipping_accounts_every_round(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    out = tmp_path / "run"
    port = start_server(
        procs, tmp_path, "--model", "cnn_gn", "--rounds", "3", "--min-clients", "2", "--out", str(out),
        "--dp-central", "--dp-clip", "0.1", "--dp-noise-multiplier", "0.8", "--dp-adaptive-clip",
        "--dp-target-epsilon", "50",
    )  # fmt: skip
    for name in ("hospital_a", "hospital_b"):
        hospital(procs, data, name, port)

    codes = procs.wait_all(timeout=240)

    assert set(codes.values()) == {0}, procs.log("server")
    central = [r["privacy"]["central"] for r in history(out)]
    assert [c["rounds"] for c in central] == [1, 2, 3]
    assert 0 < central[0]["epsilon"] < central[1]["epsilon"] < central[2]["epsilon"] <= 50
    assert central[1]["clip"] == pytest.approx(central[0]["next_clip"])  # the bound moved between rounds
    summary = json.loads((out / "model.json").read_text())["privacy"]["central"]
    assert summary["epsilon"] == central[2]["epsilon"] and summary["delta"] == 1e-5
    assert summary["sampling_rate"] == 1.0 and summary["noise_multiplier"] == 0.8


def test_dp_sgd_with_a_batchnorm_model_is_a_clear_error(tmp_path: Path, data: Path, procs: ProcessGroup) -> None:
    port = start_server(procs, tmp_path, "--model", "cnn", "--min-clients", "1", "--out", str(tmp_path / "run"))
    hospital(procs, data, "hospital_a", port, "--dp-sgd", "--dp-clip", "1", "--dp-noise-multiplier", "1")

    code = procs.procs["hospital_a"].wait(timeout=120)

    log = procs.log("hospital_a")
    assert code == 1
    assert "fed-client: error: --dp-sgd cannot train the coordinator's model cnn" in log
    assert "Traceback" not in log
    assert not (data / "hospital_a" / "privacy-ledger.json").exists()  # nothing was released, nothing spent
