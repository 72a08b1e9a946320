import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from medfed.common.data.folders import Split
from medfed.common.errors import DeviceError, UnknownModelError, WireFormatError
from medfed.common.limits import MODEL_NAMES
from medfed.common.messages import TrainSettings
from medfed.common.ml.models import build_model
from medfed.common.ml.training import evaluate, normalize, pick_device, random_affine, tensors, train_local
from medfed.common.training_plan import lr_factor
from medfed.common.wire.convert import settings_from_proto, settings_to_proto


def split(n: int = 64, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), np.arange(n) % 3)


def test_training_is_reproducible_from_its_seed_dropout_included() -> None:
    torch.manual_seed(0)
    first = build_model("cnn", 1, 3)
    second = copy.deepcopy(first)
    data = split()

    for model in (first, second):
        train_local(model, data, epochs=2, lr=1e-2, batch_size=16, device=torch.device("cpu"), seed=11, progress=False)

    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_evaluate_counts_per_class_and_confusion() -> None:
    class Constant(nn.Module):  # always predicts class 1
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 1.0, 0.0]).repeat(len(x), 1)

    data = Split(np.zeros((4, 1, 8, 8), dtype=np.uint8), np.array([0, 1, 1, 0]))

    result = evaluate(Constant(), data, num_classes=3, device=torch.device("cpu"))

    assert result.accuracy == 0.5
    assert result.per_class_accuracy == [0.0, 1.0, None]
    assert result.confusion == [[0, 2, 0], [0, 2, 0], [0, 0, 0]]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_take_the_manifests_channels_and_classes(name: str) -> None:
    out = build_model(name, 3, 7)(torch.zeros(2, 3, 28, 28))

    assert out.shape == (2, 7)


def test_unknown_models_are_refused_with_the_choices() -> None:
    with pytest.raises(UnknownModelError, match="choose one of cnn, cnn_gn, resnet18, resnet18_gn"):
        build_model("vgg", 1, 2)


def test_unavailable_devices_are_refused_by_name() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no such CUDA device"):
            pick_device("cuda:0")
    with pytest.raises(DeviceError, match="unknown device"):
        pick_device("quantum")


def test_random_affine_moves_images_reproducibly_and_is_the_identity_at_zero() -> None:
    images = torch.rand((6, 1, 16, 16))

    same = random_affine(images, torch.Generator().manual_seed(3), max_shift=0.0, max_degrees=0.0)
    first = random_affine(images, torch.Generator().manual_seed(3))
    again = random_affine(images, torch.Generator().manual_seed(3))

    assert torch.allclose(same, images, atol=1e-5)
    assert first.shape == images.shape and torch.equal(first, again)
    assert not torch.allclose(first, images, atol=1e-2)


def test_augmentation_travels_in_the_task_settings() -> None:
    settings = TrainSettings(1, 1e-3, 16, seed=4, augment=True)

    assert settings_from_proto(settings_to_proto(settings)) == settings
    assert settings_from_proto(settings_to_proto(TrainSettings(1, 1e-3, 16, seed=4))).augment is False


def test_the_cosine_schedule_decays_from_one_towards_zero() -> None:
    factors = [lr_factor("cosine", step, 10) for step in range(10)]

    assert factors[0] == 1.0 and all(a > b for a, b in itertools.pairwise(factors)) and 0 < factors[-1] < 0.03
    assert lr_factor("constant", 7, 10) == 1.0


def test_fedprox_adds_mu_times_the_distance_from_the_global_weights_to_every_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    by_hand, plain = copy.deepcopy(model), copy.deepcopy(model)
    data = split(n=16)
    mu, lr, steps = 0.5, 0.05, 4

    train_local(model, data, epochs=steps, lr=lr, batch_size=16, device=torch.device("cpu"), seed=1,
                progress=False, proximal_mu=mu)  # fmt: skip
    train_local(plain, data, epochs=steps, lr=lr, batch_size=16, device=torch.device("cpu"), seed=1,
                progress=False)  # fmt: skip

    # the same full-batch Adam steps, with FedProx's gradient mu * (w - w_global) added by hand
    anchor = [p.detach().clone() for p in by_hand.parameters()]
    optimizer = torch.optim.Adam(by_hand.parameters(), lr=lr)
    images, labels = tensors(data)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(by_hand(normalize(images)), labels).backward()
        for p, p0 in zip(by_hand.parameters(), anchor, strict=True):
            assert p.grad is not None
            p.grad += mu * (p.detach() - p0)
        optimizer.step()
    for got, expected, without in zip(model.parameters(), by_hand.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, without)  # the term changed the result


def test_fedprox_travels_in_the_task_settings_and_a_bad_mu_is_refused() -> None:
    settings = TrainSettings(1, 1e-3, 16, seed=4, proximal_mu=0.01)

    assert settings_from_proto(settings_to_proto(settings)) == settings
    bad = settings_to_proto(settings)
    bad.proximal_mu = -1.0
    with pytest.raises(WireFormatError, match="FedProx"):
        settings_from_proto(bad)


def test_scaffold_and_fedbn_travel_in_the_task_settings() -> None:
    settings = TrainSettings(1, 0.05, 16, seed=4, optimizer="sgd", scaffold=True, local_normalization=True)

    assert settings_from_proto(settings_to_proto(settings)) == settings
