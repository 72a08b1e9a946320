"""Clipping, noise and the model checks of differential privacy (common/dp/mechanisms.py, common/ml/dp_sgd.py)."""

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from medfed.common.data.folders import Split
from medfed.common.dp.mechanisms import DpSettings, add_gaussian_noise, clip_update, l2_norm, privatize_update
from medfed.common.errors import WireFormatError
from medfed.common.messages import PrivacyReport, report_to_json
from medfed.common.ml.dp_sgd import plan_dp_sgd, train_dp_sgd, wrap_problem
from medfed.common.ml.models import build_model, dp_model_problem
from medfed.common.tensors import StateDict
from medfed.common.wire.convert import report_from_proto, report_to_proto
from medfed.proto.v1 import federation_pb2 as pb


def random_update(sizes: list[tuple[int, ...]], scale: float, seed: int) -> StateDict:
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.standard_normal(size) * scale for i, size in enumerate(sizes)}


@pytest.mark.parametrize(
    ("sizes", "scale"),
    [
        ([(1,)], 10.0),
        ([(3, 3)], 0.01),
        ([(10,), (5, 4)], 1.0),
        ([(64, 32, 3, 3), (64,)], 0.1),
        ([(1000, 100)], 5.0),
        ([(7,), (0,), (2, 2, 2)], 100.0),
    ],
)
@pytest.mark.parametrize("clip", [1e-3, 0.5, 1.0, 37.0])
def test_clipped_update_norm_is_at_most_the_bound(sizes: list[tuple[int, ...]], scale: float, clip: float) -> None:
    update = random_update(sizes, scale, seed=len(sizes))

    clipped, norm = clip_update(update, clip)

    assert l2_norm(clipped) <= clip * (1 + 1e-12)
    assert norm == pytest.approx(l2_norm(update))
    if norm <= clip:  # an update inside the ball is left alone
        assert all(np.array_equal(clipped[k], update[k]) for k in update)


def test_noise_standard_deviation_matches_sigma_times_clip() -> None:
    settings = DpSettings("local", clip=0.7, noise_multiplier=1.3)
    zeros = {"a": np.zeros(300_000), "b": np.zeros((50, 40))}

    noised = add_gaussian_noise(zeros, settings.noise_multiplier * settings.clip, np.random.default_rng(0))

    values = np.concatenate([v.reshape(-1) for v in noised.values()])
    expected = 0.7 * 1.3
    # std of a sample std over n normals is about expected / sqrt(2n) = 0.0011 here: 1% is 8 of those
    assert float(values.std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(values.mean())) < 5 * expected / math.sqrt(values.size)


def test_no_noise_and_a_huge_bound_leave_the_update_unchanged() -> None:
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal((20, 5)), "b": rng.standard_normal(5), "steps": np.array(7)}
    local = {"w": base["w"] + rng.standard_normal((20, 5)), "b": base["b"] - 3.0, "steps": np.array(9)}

    sent, norm = privatize_update(
        local, base, DpSettings("local", clip=1e9, noise_multiplier=0.0), np.random.default_rng(0)
    )

    np.testing.assert_allclose(sent["w"], local["w"], rtol=1e-15)
    np.testing.assert_allclose(sent["b"], local["b"], rtol=1e-15)
    assert np.array_equal(sent["steps"], base["steps"])  # non-float tensors carry no update under DP
    assert norm > 0


def test_privatized_update_stays_within_clip_of_the_base_without_noise() -> None:
    base = {"w": np.zeros(100, dtype=np.float32)}
    local = {"w": np.full(100, 3.0, dtype=np.float32)}

    sent, norm = privatize_update(local, base, DpSettings("local", 2.0, 0.0), np.random.default_rng(0))

    assert norm == pytest.approx(30.0)
    assert l2_norm({"w": sent["w"] - base["w"]}) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize(("clip", "sigma"), [(0.0, 1.0), (-1.0, 1.0), (1.0, -0.1), (math.nan, 1.0), (1.0, math.inf)])
def test_invalid_settings_are_refused(clip: float, sigma: float) -> None:
    with pytest.raises(ValueError, match=r"clipping bound|noise multiplier"):
        DpSettings("local", clip, sigma)


def test_batchnorm_models_are_refused_and_groupnorm_models_accepted() -> None:
    problem = dp_model_problem(build_model("cnn", 1, 3))
    wrap = wrap_problem(build_model("cnn", 1, 3))

    assert problem is not None and "BatchNorm2d" in problem and "cnn_gn" in problem
    assert wrap is not None and "BatchNorm" in wrap
    assert dp_model_problem(build_model("cnn_gn", 1, 3)) is None
    assert wrap_problem(build_model("cnn_gn", 1, 3)) is None
    assert dp_model_problem(build_model("resnet18_gn", 3, 4)) is None


def test_dp_sgd_plan_uses_batch_over_n_and_one_pass_per_epoch() -> None:
    assert plan_dp_sgd(1000, 50, 3) == type(plan_dp_sgd(1000, 50, 3))(0.05, 60)
    assert plan_dp_sgd(10, 64, 1).sampling_rate == 1.0


def test_dp_sgd_trains_and_can_train_the_same_model_again() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 255, (64, 1, 8, 8), dtype=np.uint8), rng.integers(0, 2, 64))
    model = build_model("cnn_gn", 1, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_dp_sgd(64, 16, 1)

    for _ in range(2):  # Opacus's hooks must be gone after a round, or the second one would fail
        result = train_dp_sgd(
            model, split, plan=plan, lr=0.01, clip=1.0, noise_multiplier=1.0, device=torch.device("cpu"), progress=False
        )

    assert result.num_examples == 64
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_privacy_reports_round_trip_and_infinity_becomes_null_in_json() -> None:
    report = PrivacyReport("dp_sgd", 1.0, 1.1, 0.05, 40, 3, 2.5, 1e-5)
    no_noise = PrivacyReport("local", 1.0, 0.0, 1.0, 1, 1, math.inf, 1e-5)

    assert report_from_proto(report_to_proto(report)) == report
    assert report_from_proto(report_to_proto(no_noise)) == no_noise
    assert report_to_json(no_noise)["epsilon"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"mechanism": "central"},
        {"epsilon": math.nan},
        {"epsilon": -1.0},
        {"delta": 0.0},
        {"sampling_rate": 1.5},
        {"clip": 0.0},
        {"steps": 0},
        {"noise_multiplier": math.inf},
    ],
)
def test_implausible_privacy_reports_are_refused(change: dict[str, object]) -> None:
    fields = {**asdict(PrivacyReport("local", 1.0, 1.0, 1.0, 1, 1, 3.0, 1e-5)), **change}

    with pytest.raises(WireFormatError):
        report_from_proto(pb.PrivacyReport(**fields))  # type: ignore[arg-type]
