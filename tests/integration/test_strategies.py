"""Strategies in real federations (fed-server and fed-client processes over mutual TLS on loopback, run
by fed-study), one arm per strategy, against a hospital that simulates a poisoning attack."""

import json
from pathlib import Path

from medfed.common.data.partition import partition_to_folders
from tests.helpers import run_cli, synthetic_dataset

HOSPITALS = ["hospital_a", "hospital_b", "hospital_c"]


def read_history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_median_keeps_learning_with_a_poisoning_hospital_and_fedavg_does_not(tmp_path: Path) -> None:
    partition_to_folders(synthetic_dataset(num_classes=4), tmp_path / "data", clients=3, scheme="iid", seed=0)
    out = tmp_path / "study"

    result = run_cli(
        "medfed.tools.study", "--hospitals", *(str(tmp_path / "data" / h) for h in HOSPITALS),
        "--test", str(tmp_path / "data" / "test"), "--rounds", "3", "--batch-size", "16", "--out", str(out),
        "--strategies", "fedavg,median", "--attackers", "1", "--attack", "scale:100", timeout=400,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    fedavg, median = read_history(out / "federated-fedavg"), read_history(out / "federated-median")
    assert [r["strategy"] for r in fedavg + median] == ["fedavg"] * 3 + ["median"] * 3
    assert all(r["num_clients"] == 3 for r in fedavg + median)
    assert median[-1]["accuracy"] > 0.9  # four classes: chance is 0.25
    # FedAvg averages the 100-fold update in: no round comes near what the median reaches
    assert all(r.get("accuracy", 0.0) < 0.6 for r in fedavg)
    for strategy in ("fedavg", "median"):
        logs = out / "arms" / strategy / "logs"
        assert "SIMULATED ATTACK" in (logs / "hospital_c.log").read_text()
        assert "SIMULATED ATTACK" not in (logs / "hospital_a.log").read_text()
    assert not list((out / "federated-median" / "round-updates").glob("*"))  # the store went with each round
    study = json.loads((out / "study.json").read_text())
    assert [m["name"] for m in study["models"]] == [
        *(f"local {h}" for h in HOSPITALS), "federated fedavg", "federated median", "centralized"
    ]  # fmt: skip
    assert study["models"][4]["accuracy"] == median[-1]["accuracy"]
    report = (out / "report.md").read_text()
    assert "hospital_c simulated a poisoning attack (`--simulate-attack scale:100`)" in report
    assert "[federated-median/report.md](federated-median/report.md)" in report
