"""A hospital node run as a service: fed-client --stay takes part in one federation after another,
across coordinator restarts, and refuses, under its --policy, a federation that breaks a rule."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from medfed.common.data.partition import partition_to_folders
from medfed.tools.local_run import ProcessGroup
from tests.helpers import run_cli, synthetic_dataset, wait_for_log

POLICY = 'max_local_epochs = 2\nallowed_models = ["cnn"]\n'


def free_port() -> int:
    """A port the kernel just handed out (the coordinators below must all listen on the same one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def coordinator(procs: ProcessGroup, tmp: Path, name: str, port: int, *args: str) -> None:
    procs.start(name, "medfed.server", "--insecure", "--address", f"127.0.0.1:{port}", "--min-clients", "1",
                "--out", str(tmp / name), "--dashboard-address", "off", "--finish-grace", "2", *args)  # fmt: skip


def test_a_node_that_stays_serves_federation_after_federation_and_refuses_one_its_policy_forbids(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    partition_to_folders(synthetic_dataset(num_classes=2, size=8), tmp_path / "data", clients=1, scheme="iid")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    port = free_port()
    coordinator(procs, tmp_path, "first", port, "--rounds", "2")
    procs.start("hospital", "medfed.client", "--insecure", "--data", str(tmp_path / "data" / "hospital_a"),
                "--server", f"127.0.0.1:{port}", "--threads", "1", "--no-progress", "--max-wait", "5", "--stay",
                "--policy", str(policy))  # fmt: skip
    assert procs.procs["first"].wait(timeout=120) == 0, procs.tail("first", 10)
    wait_for_log(procs, "hospital", "waiting for the coordinator's next federation (--stay)")

    coordinator(procs, tmp_path, "greedy", port, "--rounds", "2", "--local-epochs", "3", "--join-timeout", "600")
    wait_for_log(procs, "hospital", "max_local_epochs = 2: the round asks for 3")
    wait_for_log(procs, "greedy", "hospital_a left the federation")
    procs.procs["greedy"].send_signal(signal.SIGTERM)
    procs.procs["greedy"].wait(timeout=60)

    coordinator(procs, tmp_path, "second", port, "--rounds", "2")
    assert procs.procs["second"].wait(timeout=120) == 0, procs.tail("second", 10)
    assert procs.procs["hospital"].poll() is None  # still there, for the next one

    for run in ("first", "second"):
        history = [json.loads(line) for line in (tmp_path / run / "history.jsonl").read_text().splitlines()]
        assert [r["clients"] for r in history] == [["hospital_a"], ["hospital_a"]]
    refusals = [line for line in procs.log("hospital").splitlines() if "breaks the policy" in line]
    assert len(refusals) == 1 and "refused round 1's task" in refusals[0]
    procs.procs["hospital"].send_signal(signal.SIGTERM)
    assert procs.procs["hospital"].wait(timeout=30) == 128 + signal.SIGTERM


def test_a_bad_policy_file_stops_the_node_at_start_up_with_one_line(tmp_path: Path) -> None:
    partition_to_folders(synthetic_dataset(num_classes=2, size=8), tmp_path / "data", clients=1, scheme="iid")
    policy = tmp_path / "policy.toml"
    policy.write_text("max_local_epoch = 2\n")
    result = run_cli("medfed.client", "--insecure", "--data", str(tmp_path / "data" / "hospital_a"),
                     "--server", "127.0.0.1:1", "--policy", str(policy))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fed-client: error: --policy {policy}: unknown key 'max_local_epoch' (did you mean max_local_epochs?)"
    ]
