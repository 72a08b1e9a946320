"""Faults with real processes: a coordinator killed or stopped mid-run resumes, hospitals come back."""

import json
import re
import signal
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medfed.common.data.partition import partition_to_folders
from medfed.server.run_dir import load_model
from medfed.tools.local_run import ProcessGroup
from tests.helpers import run_cli, start_server, synthetic_dataset, wait_for_log

HOSPITALS = ("hospital_a", "hospital_b")
"""two are enough for every fault below: one that misbehaves, one that carries on"""
POLL_S = 0.05


@pytest.fixture
def data(tmp_path: Path) -> Path:
    partition_to_folders(synthetic_dataset(num_classes=3, size=8), tmp_path / "data", clients=2, scheme="iid")
    return tmp_path / "data"


def rounds_done(out: Path) -> list[int]:
    path = out / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["round"] for line in path.read_text().split("\n")[:-1]]


def wait_for_round(out: Path, round_number: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while round_number not in rounds_done(out):
        assert time.monotonic() < deadline, f"round {round_number} did not complete in {timeout} s"
        time.sleep(POLL_S)


def server_args(out: Path, rounds: int) -> list[str]:
    return ["--rounds", str(rounds), "--min-clients", "2", "--out", str(out), "--seed", "3", "--batch-size", "16",
            "--round-timeout", "60"]  # fmt: skip


def start_hospitals(procs: ProcessGroup, data: Path, port: int, names: tuple[str, ...] = HOSPITALS) -> None:
    for name in names:
        procs.start(
            name, "medfed.client", "--data", str(data / name), "--server", f"127.0.0.1:{port}", "--insecure",
            "--threads", "1", "--max-wait", "60",  # progress bars left to the default: none into a log file
        )  # fmt: skip


def freeze_after_joining(procs: ProcessGroup, data: Path, port: int, name: str) -> None:
    """Start ``name`` alone and SIGSTOP it once it has joined: it is then chosen for round 1 but cannot
    report, whatever the timing (a tiny model trains in milliseconds, so a signal sent later could land
    after the hospital had already reported)."""
    start_hospitals(procs, data, port, names=(name,))
    wait_for_log(procs, "server", f"{name} joined")
    procs.procs[name].send_signal(signal.SIGSTOP)


def restart_server(procs: ProcessGroup, tmp_path: Path, port: int, out: Path, rounds: int, label: str) -> None:
    procs.start(
        label, "medfed.server", "--insecure", "--address", f"127.0.0.1:{port}", *server_args(out, rounds), "--resume"
    )


def test_coordinator_killed_twice_resumes_with_complete_history_and_the_same_model(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "run"
    uninterrupted_run = ProcessGroup(tmp_path / "reference-logs")
    try:
        port = start_server(uninterrupted_run, reference, *server_args(reference, 4))
        start_hospitals(uninterrupted_run, data, port)
        assert set(uninterrupted_run.wait_all(timeout=180).values()) == {0}, uninterrupted_run.log("server")
    finally:
        uninterrupted_run.stop_all()

    port = start_server(procs, tmp_path, *server_args(out, 4))
    freeze_after_joining(procs, data, port, "hospital_b")
    start_hospitals(procs, data, port, names=("hospital_a",))
    wait_for_log(procs, "hospital_a", "round 1/")  # round 1 is open and waits for hospital_b
    procs.procs["server"].send_signal(signal.SIGKILL)  # during a round, before any checkpoint
    procs.procs["server"].wait()
    procs.procs["hospital_b"].send_signal(signal.SIGCONT)
    restart_server(procs, tmp_path, port, out, 4, "server_2")  # --resume with nothing completed starts afresh
    wait_for_round(out, 2)
    procs.procs["server_2"].send_signal(signal.SIGKILL)  # after round 2's checkpoint or during round 3
    procs.procs["server_2"].wait()
    restart_server(procs, tmp_path, port, out, 4, "server_3")
    codes = procs.wait_all(timeout=180)

    assert codes["server_3"] == 0, procs.log("server_3")
    assert "holds no completed round yet; starting at round 1" in procs.log("server_2")
    assert all(codes[name] == 0 for name in HOSPITALS), {n: procs.tail(n) for n in HOSPITALS}
    assert rounds_done(out) == [1, 2, 3, 4]
    # Rounds cut short by a kill were run again: each counts once in what a hospital says it took part in.
    assert re.search(r"took part in 4 of the 4 round\(s\) \([12] of them twice", procs.log("hospital_a"))
    assert all("\r" not in procs.log(name) for name in HOSPITALS)  # no progress bars in log files
    assert all(sorted(json.loads(line)["clients"]) == list(HOSPITALS) for line in (out / "history.jsonl").open())
    # The audit chain survived both kills: a round recorded but not checkpointed was cut, the rest verifies.
    verified = run_cli("medfed.tools.audit.cli", "verify", str(out), "--allow-unsigned")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    chain = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["round"] for r in chain if r["kind"] == "round"] == [1, 2, 3, 4] and chain[0]["kind"] == "start"
    assert [r["kind"] for r in chain].count("resume") == 1  # the first restart had nothing to resume from
    resumed, _ = load_model(out)
    uninterrupted, _ = load_model(reference)
    # Same seeds, same checkpointed model: only float64 summation order may differ between the runs.
    assert all(
        np.allclose(resumed[k].astype(np.float32), uninterrupted[k].astype(np.float32), rtol=0, atol=1e-6)
        for k in resumed
    )


def test_sigterm_stops_the_coordinator_resumably_and_hospitals_wait_for_it(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    out = tmp_path / "run"
    port = start_server(procs, tmp_path, *server_args(out, 3))
    start_hospitals(procs, data, port)
    wait_for_round(out, 1)

    procs.procs["server"].send_signal(signal.SIGTERM)
    first_code = procs.procs["server"].wait(timeout=60)
    hospitals_alive = [procs.procs[name].poll() is None for name in HOSPITALS]
    restart_server(procs, tmp_path, port, out, 3, "server_2")
    codes = procs.wait_all(timeout=180)

    assert first_code == 128 + signal.SIGTERM
    assert "continue with the same command and --resume" in procs.log("server")
    assert hospitals_alive == [True, True]
    assert codes["server_2"] == 0 and all(codes[name] == 0 for name in HOSPITALS), procs.log("server_2")
    assert "waiting up to 60 s (--max-wait) for it to come back" in procs.log("hospital_a")
    assert rounds_done(out) == [1, 2, 3]


def test_resume_refuses_other_training_settings_and_a_finished_run_but_takes_fewer_hospitals(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    out = tmp_path / "run"
    port = start_server(procs, tmp_path, *server_args(out, 1), "--clients-per-round", "2")
    start_hospitals(procs, data, port)
    assert set(procs.wait_all(timeout=120).values()) == {0}

    other_model = procs.start("m", "medfed.server", "--insecure", *server_args(out, 2), "--model", "cnn_gn", "--resume")
    finished = procs.start("f", "medfed.server", "--insecure", *server_args(out, 1), "--resume")
    fresh = procs.start("n", "medfed.server", "--insecure", *server_args(out, 2))
    refusals = [p.wait(timeout=60) for p in (other_model, finished, fresh)]
    # A hospital was lost: go on with two, with smaller operational settings (the training ones unchanged).
    fewer = ["--min-clients", "1", "--clients-per-round", "1", "--min-fit", "1"]
    procs.start("resumed", "medfed.server", "--insecure", "--address", f"127.0.0.1:{port}", *server_args(out, 2),
                *fewer, "--resume")  # fmt: skip
    start_hospitals(procs, data, port, names=("hospital_a",))
    codes = procs.wait_all(timeout=120)

    assert refusals == [2, 2, 2]
    assert "--resume: the run was started with --model cnn, this command gives cnn_gn" in procs.log("m")
    assert "has already completed 1 of --rounds 1; give a larger --rounds" in procs.log("f")
    assert "continue it with --resume" in procs.log("n")
    assert codes["resumed"] == 0, procs.log("resumed")
    assert rounds_done(out) == [1, 2]
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert [len(r["clients"]) for r in history] == [2, 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_checks_and_a_hospital_killed_mid_round_do_not_stall_the_run(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    out, health_port = tmp_path / "run", free_port()
    port = start_server(
        procs, tmp_path, *server_args(out, 4), "--min-fit", "1", "--round-timeout", "10",
        "--health-address", f"127.0.0.1:{health_port}",
    )  # fmt: skip
    probe = run_cli("medfed.server.health", f"127.0.0.1:{health_port}")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        main_port_status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    freeze_after_joining(procs, data, port, "hospital_b")
    start_hospitals(procs, data, port, names=("hospital_a",))
    wait_for_log(procs, "hospital_a", "round 1/")  # round 1 is open, and hospital_b is one of the chosen

    procs.procs["hospital_b"].send_signal(signal.SIGKILL)
    wait_for_round(out, 1)  # closes at --round-timeout with the hospital left (--min-fit 1)
    procs.start(
        "hospital_b_again", "medfed.client", "--data", str(data / "hospital_b"), "--server", f"127.0.0.1:{port}",
        "--insecure", "--threads", "1", "--no-progress",
    )  # fmt: skip
    codes = procs.wait_all(timeout=180)

    assert probe.returncode == 0 and "SERVING" in probe.stdout, probe.stderr
    assert main_port_status.status == health_pb2.HealthCheckResponse.SERVING
    assert codes["server"] == 0 and codes["hospital_b_again"] == 0, procs.log("server")
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert history[0]["clients"] == ["hospital_a"] and history[0]["missing"] == ["hospital_b"]
    assert sorted(history[-1]["clients"]) == list(HOSPITALS)  # the restarted hospital is back
    after = run_cli("medfed.server.health", f"127.0.0.1:{health_port}", "--timeout", "2")
    assert after.returncode == 1  # the coordinator has exited: the probe fails with one line
    assert "Traceback" not in after.stderr


def test_a_frozen_hospital_is_noticed_within_the_heartbeat_timeout_and_taken_back_when_it_wakes(
    tmp_path: Path, data: Path, procs: ProcessGroup
) -> None:
    out, config = tmp_path / "run", tmp_path / "server.toml"
    config.write_text("poll-timeout = 1\n")  # hospitals' long polls last 1 s, so 4 s of silence means trouble
    port = start_server(
        procs, tmp_path, *server_args(out, 2), "--config", str(config), "--heartbeat-timeout", "4",
        "--round-timeout", "300",
    )  # fmt: skip
    freeze_after_joining(procs, data, port, "hospital_b")  # a hung host: its connections stay open
    start_hospitals(procs, data, port, names=("hospital_a",))

    wait_for_log(procs, "server", "hospital_b has been silent for")  # long before --round-timeout
    procs.procs["hospital_b"].send_signal(signal.SIGCONT)
    codes = procs.wait_all(timeout=180)

    assert set(codes.values()) == {0}, procs.log("server")
    assert "hospital_b is back" in procs.log("server")
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    # round 1 needs both (--min-fit defaults to --min-clients), so it took hospital_b back when it woke
    assert [sorted(r["clients"]) for r in history] == [list(HOSPITALS), list(HOSPITALS)]
