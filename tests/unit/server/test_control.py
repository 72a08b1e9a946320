"""The operator's commands, without gRPC: what extend, remove and stop accept and refuse."""

from __future__ import annotations

import pytest

from medfed.common.errors import ConfigError
from medfed.server.control import RunControl
from medfed.server.coordinator import Coordinator
from medfed.server.errors import InvalidRequest, NotFound, PermissionDenied, Rejected
from tests.unit.server.test_coordinator import INFO


def test_extend_moves_the_last_round_within_what_the_privacy_target_allows() -> None:
    coordinator = Coordinator(data_info=INFO)

    def check(rounds: int) -> None:
        if rounds > 12:
            raise ConfigError(f"--dp-target-epsilon 3: {rounds} rounds would spend ε = 4.1")

    control = RunControl(coordinator, 10, check_rounds=check)
    coordinator.monitor.round_opened(4, [], 60)
    with pytest.raises(InvalidRequest, match="from 4"):
        control.extend("ops", 3)
    with pytest.raises(InvalidRequest, match=r"ε = 4\.1"):
        control.extend("ops", 13)
    assert control.rounds == 10
    control.extend("ops", 12)
    assert control.rounds == 12 and coordinator.monitor.snapshot().total_rounds == 12


def test_a_removed_hospital_is_refused_from_then_on_and_the_removal_is_kept() -> None:
    coordinator = Coordinator(data_info=INFO)
    kept: list[dict[str, str]] = []
    control = RunControl(coordinator, 5, save_removed=kept.append)
    coordinator.join("hospital_a", 10, INFO)
    with pytest.raises(NotFound):
        control.remove("ops", "hospital_z")
    control.remove("ops", "hospital_a", "suspicious updates")
    with pytest.raises(PermissionDenied, match="removed by the operator ops: suspicious updates"):
        coordinator.join("hospital_a", 10, INFO)
    assert kept == [{"hospital_a": "removed by the operator ops: suspicious updates"}]
    resumed = Coordinator(data_info=INFO)
    resumed.keep_out(kept[-1])
    with pytest.raises(PermissionDenied):
        resumed.join("hospital_a", 10, INFO)


def test_stop_ends_the_run_once() -> None:
    coordinator = Coordinator(data_info=INFO)
    control = RunControl(coordinator, 5)
    control.stop("ops", resumable=True, reason="redeploy")
    finished = coordinator.finished
    assert finished is not None and finished.resumable and "ops: redeploy" in finished.reason
    assert control.stopped_by == "ops"
    with pytest.raises(Rejected):
        control.stop("ops", resumable=False)
