"""The simulated attacks of fed-client --simulate-attack: each changes what the poisoning literature
says it changes, and nothing else."""

import numpy as np
import pytest

from medfed.client.attack import Attack, flip_labels, parse_attack, poison_update
from medfed.common.data.folders import Split
from medfed.common.errors import ConfigError

GLOBAL = {
    "w": np.array([1.0, 2.0, 3.0], dtype=np.float32),
    "bn.running_var": np.array([0.5, 0.5], dtype=np.float32),
    "bn.num_batches_tracked": np.array(7),
}
TRAINED = {
    "w": np.array([1.5, 1.0, 3.0], dtype=np.float32),
    "bn.running_var": np.array([0.25, 0.75], dtype=np.float32),
    "bn.num_batches_tracked": np.array(9),
}


@pytest.mark.parametrize(
    ("attack", "expected_w"),
    [(Attack("sign-flip"), [0.5, 3.0, 3.0]), (Attack("scale", 100.0), [51.0, -98.0, 3.0])],
)
def test_update_attacks_change_the_parameters_step_and_leave_statistics_as_trained(
    attack: Attack, expected_w: list[float]
) -> None:
    sent = poison_update(attack, TRAINED, GLOBAL)

    np.testing.assert_allclose(sent["w"], expected_w)
    np.testing.assert_array_equal(sent["bn.running_var"], TRAINED["bn.running_var"])
    assert sent["bn.num_batches_tracked"] == 9


def test_the_gaussian_attack_sends_noise_around_the_global_model() -> None:
    big = {"w": np.zeros(20_000, dtype=np.float32)}

    sent = poison_update(Attack("gaussian", 2.0), big, big, np.random.default_rng(0))

    assert abs(float(sent["w"].std()) - 2.0) < 0.05 and abs(float(sent["w"].mean())) < 0.05


def test_label_flip_maps_each_class_to_its_mirror_and_leaves_the_update_alone() -> None:
    split = Split(np.zeros((4, 1, 2, 2), dtype=np.uint8), np.array([0, 1, 2, 3]))

    assert flip_labels(split, 4).labels.tolist() == [3, 2, 1, 0]
    assert poison_update(Attack("label-flip"), TRAINED, GLOBAL) == TRAINED


@pytest.mark.parametrize("text", ["scale:0", "scale:abc", "gaussian:-1", "gaussian", "sign-flip:2", "backdoor"])
def test_unknown_or_malformed_attacks_are_refused_with_the_forms_allowed(text: str) -> None:
    with pytest.raises(ConfigError, match="label-flip, sign-flip, scale:K"):
        parse_attack(text)


def test_the_forms_parse() -> None:
    assert parse_attack("scale:-3") == Attack("scale", -3.0)
    assert parse_attack("gaussian:0.5") == Attack("gaussian", 0.5)
    assert parse_attack("label-flip") == Attack("label-flip")
