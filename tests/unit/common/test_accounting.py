"""Privacy accounting (medfed.common.dp.accounting) against Google's dp-accounting, and the hospital ledger."""

import itertools
import json
import math
from pathlib import Path

import dp_accounting as dpa
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from medfed.client.privacy import BudgetExhausted, HospitalPrivacy
from medfed.common.dp.accounting import Spend, default_delta, epsilon, rounds_within
from medfed.common.dp.mechanisms import DpSettings
from medfed.common.errors import ConfigError
from medfed.common.messages import TrainSettings


def library_epsilon(event: dpa.DpEvent, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def test_local_dp_is_a_gaussian_release_with_half_the_multiplier_per_round() -> None:
    spends = [Spend(mechanism="local", noise_multiplier=1.1)] * 5

    result = epsilon(spends, 1e-5)

    assert result == pytest.approx(library_epsilon(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(0.55), 5), 1e-5))


def test_dp_sgd_is_a_poisson_sampled_gaussian_per_step() -> None:
    spend = Spend(mechanism="dp_sgd", noise_multiplier=1.1, sampling_rate=256 / 60_000, steps=14_070)

    result = epsilon([spend], 1e-5)

    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(256 / 60_000, dpa.GaussianDpEvent(1.1)), 14_070)
    assert result == pytest.approx(library_epsilon(event, 1e-5))
    # Abadi et al. 2016's MNIST setting (q = 256/60000, σ = 1.1, 60 epochs): RDP gives ε of about 3 at δ = 1e-5
    assert 2.0 < result < 4.0


def test_central_dp_is_a_gaussian_release_per_round() -> None:
    result = epsilon([Spend(mechanism="central", noise_multiplier=1.1, steps=10)], 1e-5)

    assert result == pytest.approx(library_epsilon(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.1), 10), 1e-5))
    pld = PLDAccountant()
    pld.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.1), 10))
    assert pld.get_epsilon(1e-5) <= result  # RDP is an upper bound; the PLD accountant is tighter


def test_adaptive_clipping_split_costs_the_same_as_one_release_of_sigma() -> None:
    sigma = 1.3
    split = Spend(
        mechanism="central",
        noise_multiplier=sigma / math.sqrt(0.95),
        count_noise_multiplier=sigma / math.sqrt(0.05),
        steps=20,
    )

    assert epsilon([split], 1e-6) == pytest.approx(
        epsilon([Spend(mechanism="central", noise_multiplier=sigma, steps=20)], 1e-6), rel=1e-6
    )


@pytest.mark.parametrize(
    "spend",
    [
        Spend(mechanism="local", noise_multiplier=2.0),
        Spend(mechanism="dp_sgd", noise_multiplier=1.0, sampling_rate=0.01, steps=100),
        Spend(mechanism="central", noise_multiplier=0.8),
    ],
)
def test_epsilon_grows_with_every_round(spend: Spend) -> None:
    values = [epsilon([spend] * rounds, 1e-5) for rounds in range(0, 8)]

    assert values[0] == 0.0
    assert all(later > earlier for earlier, later in itertools.pairwise(values))


def test_no_noise_means_infinite_epsilon() -> None:
    assert epsilon([Spend(mechanism="local", noise_multiplier=0.0)], 1e-5) == math.inf


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 2.0])
def test_delta_outside_zero_one_is_refused(delta: float) -> None:
    with pytest.raises(ValueError, match="δ"):
        epsilon([Spend(mechanism="local", noise_multiplier=1.0)], delta)


def test_rounds_within_is_the_last_round_under_the_target() -> None:
    spend = Spend(mechanism="central", noise_multiplier=1.5)

    fits = rounds_within(spend, 1e-5, 5.0, 1000)

    assert epsilon([spend] * fits, 1e-5) <= 5.0 < epsilon([spend] * (fits + 1), 1e-5)


def test_default_delta_is_well_below_one_over_n() -> None:
    assert default_delta(1000) == 1e-5
    assert default_delta(1_000_000) == pytest.approx(1e-7)


def hospital(tmp_path: Path, own: DpSettings | None, target: float | None = None, n: int = 1000) -> HospitalPrivacy:
    return HospitalPrivacy(own, num_examples=n, delta=1e-5, target_epsilon=target, ledger_path=tmp_path / "ledger.json")


SETTINGS = TrainSettings(local_epochs=1, lr=0.01, batch_size=50, seed=0)


def test_ledger_survives_a_restart_and_keeps_counting(tmp_path: Path) -> None:
    first = hospital(tmp_path, DpSettings("local", 1.0, 2.0))
    report_1 = first.record("fed1", 1, first.plan(None, SETTINGS))  # type: ignore[arg-type]

    restarted = hospital(tmp_path, DpSettings("local", 1.0, 2.0))
    report_2 = restarted.record("fed2", 1, restarted.plan(None, SETTINGS))  # type: ignore[arg-type]

    assert report_1.releases == 1 and report_2.releases == 2
    assert report_2.epsilon > report_1.epsilon
    assert len(json.loads((tmp_path / "ledger.json").read_text())["entries"]) == 2


def test_corrupt_ledger_is_a_clear_start_up_error_and_is_kept(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text('{"format": "medfed-privacy-ledger/1", "entries": [{"round": ')

    with pytest.raises(ConfigError, match=r"--dp-ledger: .* is not a readable privacy ledger"):
        hospital(tmp_path, DpSettings("local", 1.0, 1.0)).check_start()
    assert (tmp_path / "ledger.json").read_text().endswith('"round": ')


def test_target_epsilon_stops_the_round_that_would_exceed_it(tmp_path: Path) -> None:
    spend = Spend(mechanism="local", noise_multiplier=4.0)
    allowed = rounds_within(spend, 1e-5, 10.0, 100)
    privacy = hospital(tmp_path, DpSettings("local", 1.0, 4.0), target=10.0)

    for round_number in range(1, allowed + 1):
        privacy.record("fed", round_number, privacy.plan(None, SETTINGS))  # type: ignore[arg-type]
    with pytest.raises(BudgetExhausted, match="above --dp-target-epsilon 10"):
        privacy.plan(None, SETTINGS)

    assert privacy.spent <= 10.0
    assert len(privacy.ledger.entries) == allowed


def test_a_spent_budget_refuses_to_start(tmp_path: Path) -> None:
    privacy = hospital(tmp_path, DpSettings("local", 1.0, 0.5))
    privacy.record("fed", 1, privacy.plan(None, SETTINGS))  # type: ignore[arg-type]

    with pytest.raises(BudgetExhausted, match="already spent"):
        hospital(tmp_path, DpSettings("local", 1.0, 0.5), target=privacy.spent).check_start()


def test_hospital_flags_win_over_a_weaker_request_and_a_stronger_request_applies(tmp_path: Path) -> None:
    own = DpSettings("local", 1.0, 1.0)
    weaker, stronger = DpSettings("local", 2.0, 0.5), DpSettings("local", 0.5, 3.0)

    assert hospital(tmp_path, own).choose(weaker) == own
    assert hospital(tmp_path, own).choose(stronger) == stronger
    assert hospital(tmp_path, DpSettings("dp_sgd", 1.0, 1.0)).choose(stronger).mechanism == "dp_sgd"  # type: ignore[union-attr]
    assert hospital(tmp_path, None).choose(weaker) == weaker
    assert hospital(tmp_path, None).choose(None) is None


def test_rounds_without_training_spend_nothing(tmp_path: Path) -> None:
    privacy = hospital(tmp_path, DpSettings("local", 1.0, 1.0))

    planned = privacy.plan(None, TrainSettings(local_epochs=0, lr=0.01, batch_size=8, seed=0))

    assert planned is None
    assert not (tmp_path / "ledger.json").exists()


def test_dp_sgd_plan_spends_one_sampled_release_per_step(tmp_path: Path) -> None:
    privacy = hospital(tmp_path, DpSettings("dp_sgd", 1.0, 1.1), n=1000)

    planned = privacy.plan(None, TrainSettings(local_epochs=2, lr=0.01, batch_size=50, seed=0))

    assert planned is not None
    assert planned.spend == Spend(mechanism="dp_sgd", noise_multiplier=1.1, sampling_rate=0.05, steps=40)
