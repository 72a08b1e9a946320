"""The round loop (server/driver.py) with hospitals simulated as threads: no network, no processes."""

import json
import logging
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from medfed.common.data.folders import DatasetInfo
from medfed.common.errors import UnusableModel
from medfed.common.limits import SCAFFOLD_CONTROL
from medfed.common.tensors import EncodedModel, from_chunks
from medfed.server.config import ServerConfig
from medfed.server.coordinator import Coordinator
from medfed.server.driver import FederationAborted, choose, run_federation
from medfed.server.history import TestResult
from medfed.server.model_helper.host import ModelHostError
from medfed.server.rounds import Finished, Task
from medfed.server.run_dir import RunDir, load_model
from tests.helpers import InProcessModels

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))


def hospital(coordinator: Coordinator, name: str, shift: float = 0.0) -> threading.Thread:
    """Joins, then answers every task by sending the received model back (like --local-epochs 0), its
    float tensors moved by ``shift`` times the round."""
    session = coordinator.join(name, 10, INFO)

    def loop() -> None:
        while True:
            instruction = coordinator.next_instruction(session, timeout=5)
            if isinstance(instruction, Finished):
                return
            if isinstance(instruction, Task):
                state = from_chunks(instruction.payload.layout, instruction.payload.chunks())
                if shift:
                    state = {k: (v + shift * instruction.round).astype(v.dtype) if v.dtype.kind == "f" else v
                             for k, v in state.items()}  # fmt: skip
                coordinator.submit_update(session, instruction.round, 10, {"loss": 0.1}, state)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def config(tmp_path: Path, **overrides: object) -> ServerConfig:
    values = {"rounds": 3, "min_clients": 3, "local_epochs": 0, "out": tmp_path, "insecure": True, **overrides}
    return ServerConfig.model_validate(values)


def history(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]


def run(cfg: ServerConfig, coordinator: Coordinator) -> None:
    output = RunDir(cfg.out)
    output.prepare(force=False)
    run_federation(cfg, coordinator, output, InProcessModels(cfg.model))


def test_every_round_samples_clients_per_round_hospitals_reproducibly(tmp_path: Path) -> None:
    selections = []
    for attempt in range(2):
        out = tmp_path / str(attempt)
        coordinator = Coordinator(data_info=INFO)
        threads = [hospital(coordinator, f"hospital_{c}") for c in "abc"]

        run(config(out, clients_per_round=2, seed=4), coordinator)

        for t in threads:
            t.join(timeout=10)
        selections.append([r["clients"] for r in history(out)])
        assert (out / "model.safetensors").exists() and (out / "model.json").exists()
    assert selections[0] == selections[1]
    assert all(len(clients) == 2 for clients in selections[0])


def test_choose_takes_everyone_by_default_and_a_sorted_sample_otherwise() -> None:
    names = ["a", "b", "c", "d"]

    assert choose(names, None, random.Random(0)) == names
    sample = choose(names, 2, random.Random(0))
    assert len(sample) == 2 and sample == sorted(sample) and set(sample) <= set(names)


def test_a_silent_hospital_does_not_stall_a_round_that_has_min_fit_updates(tmp_path: Path) -> None:
    coordinator = Coordinator(data_info=INFO)
    threads = [hospital(coordinator, "hospital_a"), hospital(coordinator, "hospital_b")]
    coordinator.join("hospital_c", 10, INFO)  # joins, then never asks for work

    run(config(tmp_path, rounds=2, min_fit=2, round_timeout=0.5), coordinator)

    records = history(tmp_path)
    assert [r["clients"] for r in records] == [["hospital_a", "hospital_b"]] * 2
    assert all(r["missing"] == ["hospital_c"] for r in records)
    for t in threads:
        t.join(timeout=10)


class _Signal(logging.Handler):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment, self.seen = fragment, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.seen.set()


def test_a_round_short_of_min_fit_waits_on_and_takes_a_hospital_that_joins_late(tmp_path: Path) -> None:
    coordinator = Coordinator(data_info=INFO)
    hospital(coordinator, "hospital_a")
    coordinator.join("hospital_b", 10, INFO)  # silent
    signal = _Signal("waiting another")
    logging.getLogger("medfed.server").addHandler(signal)
    driver = threading.Thread(
        target=run, args=(config(tmp_path, rounds=1, min_clients=2, round_timeout=0.3), coordinator)
    )
    try:
        driver.start()
        assert signal.seen.wait(timeout=30), "the round was never extended"
        hospital(coordinator, "hospital_c")
        driver.join(timeout=30)
    finally:
        logging.getLogger("medfed.server").removeHandler(signal)

    assert not driver.is_alive()
    assert history(tmp_path)[0]["clients"] == ["hospital_a", "hospital_c"]


def test_min_fit_cannot_exceed_the_hospitals_chosen(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min-fit"):
        config(tmp_path, min_fit=4)


class _Counter(logging.Handler):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment, self.count, self.first = fragment, 0, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.count += 1
            self.first.set()


def test_a_round_left_short_of_min_fit_waits_out_its_timeout_instead_of_spinning(tmp_path: Path) -> None:
    coordinator = Coordinator(data_info=INFO)
    a = coordinator.join("hospital_a", 10, INFO)
    b = coordinator.join("hospital_b", 10, INFO)
    extensions = _Counter("waiting another")
    logging.getLogger("medfed.server").addHandler(extensions)
    cfg = config(tmp_path, rounds=1, min_clients=2, round_timeout=1.0)
    outcome: list[BaseException | None] = []

    def drive() -> None:
        try:
            run(cfg, coordinator)
            outcome.append(None)
        except FederationAborted as exc:
            outcome.append(exc)

    driver = threading.Thread(target=drive)
    try:
        driver.start()
        task = coordinator.next_instruction(a, timeout=30)
        assert isinstance(task, Task)
        coordinator.submit_update(a, 1, 10, {}, from_chunks(task.payload.layout, task.payload.chunks()))
        assert coordinator.next_instruction(b, timeout=30) is task  # b takes the task ...
        coordinator.leave(b)  # ... and leaves: everyone left in the round has reported, one short of min-fit
        assert extensions.first.wait(timeout=30)
        coordinator.finish("test over", 0)
        driver.join(timeout=30)
    finally:
        logging.getLogger("medfed.server").removeHandler(extensions)

    assert not driver.is_alive() and isinstance(outcome[0], FederationAborted)
    assert extensions.count <= 3  # about one per --round-timeout, not a busy loop
    assert not (tmp_path / "history.jsonl").exists()  # a round short of min-fit is never aggregated


def test_a_cosine_schedule_sends_each_round_its_own_learning_rate(tmp_path: Path) -> None:
    coordinator = Coordinator(data_info=INFO)
    rates: list[float] = []
    session = coordinator.join("hospital_a", 10, INFO)

    def record() -> None:
        while not isinstance(instruction := coordinator.next_instruction(session, timeout=5), Finished):
            if isinstance(instruction, Task):
                rates.append(instruction.settings.lr)
                state = from_chunks(instruction.payload.layout, instruction.payload.chunks())
                coordinator.submit_update(session, instruction.round, 10, {}, state)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    run(config(tmp_path, min_clients=1, rounds=4, lr=0.01, lr_schedule="cosine"), coordinator)
    thread.join(timeout=10)

    assert rates == pytest.approx([0.01, 0.01 * (0.5 + 0.5 * 2**-0.5), 0.005, 0.01 * (0.5 - 0.5 * 2**-0.5)])


class _FailingOnce(InProcessModels):
    """Test-set evaluation that fails on round ``bad`` (as a poisoned model's NaN outputs made it) and
    otherwise reports a finite loss."""

    def __init__(self, bad: int, error: Exception) -> None:
        super().__init__("cnn")
        self.calls, self.bad, self.error = 0, bad, error

    def evaluate(self, model: EncodedModel) -> TestResult | None:
        self.calls += 1
        if self.calls == self.bad:
            raise self.error
        return TestResult(loss=0.5, accuracy=0.5, auc=0.5, per_class_accuracy={"a": 0.5, "b": 0.5},
                          test_examples=4, confusion_matrix=[[1, 1], [1, 1]])  # fmt: skip


@pytest.mark.parametrize(
    "error",
    [UnusableModel("the model's outputs on 40 images are not finite numbers"), ModelHostError("the helper died")],
    ids=["NaN outputs", "helper failure"],
)
def test_a_round_whose_model_fails_evaluation_is_recorded_failed_and_the_run_goes_on(
    tmp_path: Path, error: Exception
) -> None:
    coordinator = Coordinator(data_info=INFO)
    session = coordinator.join("hospital_a", 10, INFO)
    received: list[dict[str, np.ndarray]] = []

    def shift_by_one() -> None:
        while not isinstance(instruction := coordinator.next_instruction(session, timeout=5), Finished):
            if isinstance(instruction, Task):
                state = from_chunks(instruction.payload.layout, instruction.payload.chunks())
                received.append({k: v.copy() for k, v in state.items()})
                shifted = {k: v + 1 if v.dtype.kind == "f" else v for k, v in state.items()}
                coordinator.submit_update(session, instruction.round, 10, {}, shifted)

    thread = threading.Thread(target=shift_by_one, daemon=True)
    thread.start()
    cfg = config(tmp_path, min_clients=1, rounds=3)
    output = RunDir(cfg.out)
    output.prepare(force=False)
    run_federation(cfg, coordinator, output, _FailingOnce(2, error))
    thread.join(timeout=10)

    records = history(tmp_path)
    assert [("failed" in r, "accuracy" in r) for r in records] == [(False, True), (True, False), (False, True)]
    assert str(error) in records[1]["failed"]
    first = next(k for k, v in received[0].items() if v.dtype.kind == "f")
    assert np.allclose(received[1][first], received[0][first] + 1)  # round 1's model was adopted
    assert np.allclose(received[2][first], received[1][first])  # round 2's was not: round 3 got round 1's again
    assert "1 round(s) failed" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm", "scaffold"])
def test_a_resumed_run_with_server_optimizer_state_ends_with_the_same_model_bit_for_bit(
    tmp_path: Path, strategy: str
) -> None:
    def federate(out: Path, rounds: int, resume: bool) -> None:
        cfg = config(out, rounds=rounds, strategy=strategy, resume=resume)
        coordinator = Coordinator(data_info=INFO)
        run_dir = RunDir(out)
        threads = [hospital(coordinator, n, s) for n, s in (("a", 0.01), ("b", -0.02), ("c", 0.03))]
        if resume:
            resumed = run_dir.load_checkpoint()
            run_dir.truncate_history(resumed.checkpoint.round)
            run_federation(cfg, coordinator, run_dir, InProcessModels(cfg.model), resumed)
        else:
            run_dir.prepare(force=False)
            run_federation(cfg, coordinator, run_dir, InProcessModels(cfg.model))
        for thread in threads:
            thread.join(timeout=30)

    federate(tmp_path / "straight", 4, resume=False)
    federate(tmp_path / "stopped", 2, resume=False)
    federate(tmp_path / "stopped", 4, resume=True)

    straight = (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert (tmp_path / "stopped" / "model.safetensors").read_bytes() == straight
    assert json.loads((tmp_path / "stopped" / "checkpoint.json").read_text())["strategy_file"]
    assert [r["strategy"] for r in history(tmp_path / "stopped")] == [strategy] * 4


def test_fedprox_asks_every_hospital_for_the_proximal_term_and_fedavg_for_none(tmp_path: Path) -> None:
    asked: dict[str, list[float]] = {}
    for strategy, extra in (("fedprox", {"prox_mu": 0.2}), ("fedavg", {})):
        coordinator = Coordinator(data_info=INFO)
        session = coordinator.join("a", 10, INFO)

        def loop(session: str = session, coordinator: Coordinator = coordinator, strategy: str = strategy) -> None:
            while not isinstance(instruction := coordinator.next_instruction(session, timeout=5), Finished):
                if isinstance(instruction, Task):
                    asked.setdefault(strategy, []).append(instruction.settings.proximal_mu)
                    state = from_chunks(instruction.payload.layout, instruction.payload.chunks())
                    coordinator.submit_update(session, instruction.round, 10, {}, state)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        run(config(tmp_path / strategy, rounds=2, min_clients=1, strategy=strategy, **extra), coordinator)
        thread.join(timeout=30)

    assert asked == {"fedprox": [0.2, 0.2], "fedavg": [0.0, 0.0]}
    assert json.loads((tmp_path / "fedprox" / "model.json").read_text())["strategy_settings"] == {
        "name": "fedprox", "prox_mu": 0.2
    }  # fmt: skip


def test_scaffold_sends_c_beside_the_model_and_moves_it_by_the_mean_change_every_round(tmp_path: Path) -> None:
    coordinator = Coordinator(data_info=INFO)
    sessions = [coordinator.join(name, 10, INFO) for name in ("a", "b")]
    received: list[dict[str, np.ndarray]] = []

    def loop(session: str, change: float) -> None:
        while not isinstance(instruction := coordinator.next_instruction(session, timeout=5), Finished):
            if isinstance(instruction, Task):
                assert instruction.settings.scaffold and instruction.settings.optimizer == "sgd"
                state = from_chunks(instruction.payload.layout, instruction.payload.chunks())
                if session == sessions[0]:
                    received.append(dict(state))
                update = {k: np.full_like(v, change) if k.startswith(SCAFFOLD_CONTROL) else v for k, v in state.items()}
                coordinator.submit_update(session, instruction.round, 10, {}, update)

    threads = [
        threading.Thread(target=loop, args=(s, d), daemon=True) for s, d in zip(sessions, (0.1, 0.3), strict=True)
    ]
    for thread in threads:
        thread.start()
    run(config(tmp_path, rounds=3, min_clients=2, strategy="scaffold", lr=0.05), coordinator)
    for thread in threads:
        thread.join(timeout=30)

    controls = [[v for k, v in r.items() if k.startswith(SCAFFOLD_CONTROL)] for r in received]
    assert controls[0] and len(controls) == 3
    for round_index, tensors in enumerate(controls):  # c = rounds so far x the mean change (0.1 + 0.3) / 2
        for tensor in tensors:
            np.testing.assert_allclose(tensor, 0.2 * round_index, rtol=1e-6)
    final, metadata = load_model(tmp_path)
    assert final and not any(k.startswith(SCAFFOLD_CONTROL) for k in final)
    assert metadata["strategy_settings"]["name"] == "scaffold"
