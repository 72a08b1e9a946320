"""The hospital's policy file: refused at start-up when malformed, and each rule against a task."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.client.policy import HospitalPolicy, load_policy
from medfed.common.errors import ConfigError
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.secagg.messages import Parameters

CNN = ModelSpec("cnn", 1, 2)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_policy_file_is_read_with_every_rule(tmp_path: Path) -> None:
    text = 'allowed_models = ["cnn_gn"]\nmax_local_epochs = 2\nmax_rounds = 30\nrequire_dp = true\nmax_epsilon = 8.0\n'
    policy = load_policy(write(tmp_path, text + 'allowed_coordinators = ["fl.example.org"]\n'))
    assert policy.allowed_models == ["cnn_gn"] and policy.max_epsilon == 8.0 and policy.require_dp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_epochs = 2\n", "unknown key 'max_epochs' (did you mean max_local_epochs?)"),
        ("max_local_epochs = -1\n", "max_local_epochs: Input should be greater than or equal to 0 (got -1)"),
        ('allowed_models = ["vgg"]\n', "allowed_models.0: Input should be 'cnn', 'cnn_gn'"),
        ('require_dp = "maybe"\n', "require_dp: Input should be a valid boolean"),
        ("max_rounds = \n", "is not valid TOML"),
    ],
)
def test_a_bad_policy_file_stops_the_node_with_one_line_naming_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_policy(write(tmp_path, text))
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def rule(policy: HospitalPolicy, *, epochs: int = 1, total: int = 10, private: bool = False,
         epsilon_after: float | None = None, model: ModelSpec = CNN) -> str | None:  # fmt: skip
    return policy.broken_by(model=model, settings=TrainSettings(epochs, 1e-3, 8, 0), total_rounds=total,
                            private=private, epsilon_after=epsilon_after)  # fmt: skip


def test_each_rule_names_itself_when_a_task_breaks_it() -> None:
    assert rule(HospitalPolicy()) is None
    assert rule(HospitalPolicy(allowed_models=["cnn_gn"])) == "allowed_models = ['cnn_gn']: the round trains cnn"
    assert rule(HospitalPolicy(max_local_epochs=1), epochs=1) is None
    assert rule(HospitalPolicy(max_local_epochs=1), epochs=3) == "max_local_epochs = 1: the round asks for 3"
    assert rule(HospitalPolicy(max_rounds=5), total=6) == "max_rounds = 5: the federation plans 6 rounds"
    assert "require_dp = true: the round asks for no differential privacy" in str(rule(HospitalPolicy(require_dp=True)))
    assert rule(HospitalPolicy(require_dp=True), epochs=0) is None  # nothing trained, nothing about the data sent
    assert rule(HospitalPolicy(require_dp=True), private=True) is None
    assert rule(HospitalPolicy(max_epsilon=8), private=True, epsilon_after=7.9) is None
    assert rule(HospitalPolicy(max_epsilon=8), private=True, epsilon_after=8.2) == (
        "max_epsilon = 8: taking part would raise this data's ε to 8.2"
    )
    assert "secure aggregation" in str(rule(HospitalPolicy(require_secure_aggregation=True)))
    secure = Parameters((("a", 1), ("b", 1)), 2, bytes(32), 1.0, 10)
    settings = TrainSettings(1, 1e-3, 8, 0, secure_aggregation=secure)
    assert (
        HospitalPolicy(require_secure_aggregation=True).broken_by(
            model=CNN, settings=settings, total_rounds=1, private=False, epsilon_after=None
        )
        is None
    )


def test_the_coordinator_must_be_one_the_policy_allows_and_authenticated() -> None:
    policy = HospitalPolicy(allowed_coordinators=["fl.example.org"])
    policy.check_coordinator("fl.example.org", tls=True)
    with pytest.raises(ConfigError, match=r"does not include 'evil\.example\.org'"):
        policy.check_coordinator("evil.example.org", tls=True)
    with pytest.raises(ConfigError, match="needs TLS"):
        policy.check_coordinator("fl.example.org", tls=False)
