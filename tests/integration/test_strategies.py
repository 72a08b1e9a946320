"""Strategies in a real federation (fed-server and fed-client processes over loopback), chosen from the
command line and from the TOML file, against a hospital that simulates a poisoning attack."""

import json
from pathlib import Path

from medfed.common.data.partition import partition_to_folders
from medfed.tools.local_run import ProcessGroup
from tests.helpers import start_server, synthetic_dataset

HOSPITALS = ["hospital_a", "hospital_b", "hospital_c"]


def federate(tmp: Path, label: str, server_args: list[str]) -> list[dict]:
    """Three hospitals, hospital_c scaling its update by 100; returns the history."""
    out = tmp / label
    out.mkdir()
    procs = ProcessGroup(out / "logs")
    try:
        return _run(tmp, out, procs, server_args)
    finally:
        procs.stop_all()


def _run(tmp: Path, out: Path, procs: ProcessGroup, server_args: list[str]) -> list[dict]:
    port = start_server(
        procs, out, "--rounds", "3", "--min-clients", "3", "--local-epochs", "1", "--batch-size", "16",
        "--test-data", str(tmp / "data" / "test"), "--out", str(out), "--round-timeout", "120", *server_args,
    )  # fmt: skip
    for name in HOSPITALS:
        attack = ["--simulate-attack", "scale:100"] if name == "hospital_c" else []
        procs.start(
            name, "medfed.client", "--data", str(tmp / "data" / name), "--server", f"127.0.0.1:{port}",
            "--insecure", "--threads", "1", "--no-progress", "--max-wait", "30", *attack,
        )  # fmt: skip
    codes = procs.wait_all(timeout=240)
    assert codes == {"server": 0, **{h: 0 for h in HOSPITALS}}, procs.log("server")
    assert "SIMULATED ATTACK" in procs.log("hospital_c")
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_median_keeps_learning_with_a_poisoning_hospital_and_fedavg_does_not(tmp_path: Path) -> None:
    partition_to_folders(synthetic_dataset(num_classes=4), tmp_path / "data", clients=3, scheme="iid", seed=0)
    config = tmp_path / "median.toml"
    config.write_text('strategy = "median"\n')

    fedavg = federate(tmp_path, "fedavg", [])
    median = federate(tmp_path, "median", ["--config", str(config)])

    assert all(r["strategy"] == "median" and r["num_clients"] == 3 for r in median)
    assert median[-1]["accuracy"] > 0.9  # four classes: chance is 0.25
    # FedAvg averages the 100-fold update in: no round comes near what the median reaches
    assert all(r["strategy"] == "fedavg" and r.get("accuracy", 0.0) < 0.6 for r in fedavg)
    assert not list((tmp_path / "median").glob("round-updates/*"))  # the disk store went with each round
