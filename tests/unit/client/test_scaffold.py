"""SCAFFOLD on the hospital's side (client/scaffold.py, the trainer's use of it, common/ml/training.py's
corrected SGD), against steps computed by hand from the paper's definitions."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medfed.client.local_state import STATE_FOLDER, LocalState
from medfed.client.scaffold import HospitalControl, next_control, split_control
from medfed.client.trainer import TaskError, Trainer
from medfed.common.data.folders import DatasetInfo, HospitalData, Split
from medfed.common.limits import SCAFFOLD_CONTROL
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import to_numpy
from medfed.common.ml.training import normalize, tensors, train_local

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))


def split(n: int = 12, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), np.arange(n) % 2)


def test_one_corrected_sgd_step_is_the_hand_computed_softmax_cross_entropy_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    w0, b0 = (p.detach().numpy().astype(np.float64).copy() for p in model.parameters())
    data = split()
    rng = np.random.default_rng(1)
    c_minus_ci = [rng.normal(0, 0.1, size=w0.shape), rng.normal(0, 0.1, size=b0.shape)]
    lr = 0.1

    result = train_local(model, data, epochs=1, lr=lr, batch_size=len(data), device=torch.device("cpu"), seed=3,
                         progress=False, optimizer="sgd",
                         correction=[torch.tensor(c, dtype=torch.float32) for c in c_minus_ci])  # fmt: skip

    x = normalize(tensors(data)[0]).reshape(len(data), -1).numpy().astype(np.float64)
    onehot = np.eye(2)[data.labels]
    logits = x @ w0.T + b0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad_w = (p - onehot).T @ x / len(data)  # d(mean cross-entropy)/dW
    grad_b = (p - onehot).mean(0)
    w1, b1 = (q.detach().numpy() for q in model.parameters())
    assert result.steps == 1
    np.testing.assert_allclose(w1, w0 - lr * (grad_w + c_minus_ci[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1, b0 - lr * (grad_b + c_minus_ci[1]), rtol=1e-5, atol=1e-6)


def test_the_new_control_variate_is_option_two_of_the_paper() -> None:
    own, server = {"w": np.array([0.5, -1.0], np.float32)}, {"w": np.array([0.25, 0.25], np.float32)}
    start, trained = {"w": np.array([1.0, 1.0], np.float32)}, {"w": np.array([0.8, 1.6], np.float32)}

    new = next_control(own, server, start, trained, steps=4, lr=0.1)

    # c_i+ = c_i - c + (x - y_i) / (K * lr): (1 - 0.8) / 0.4 = 0.5 and (1 - 1.6) / 0.4 = -1.5
    np.testing.assert_allclose(new["w"], [0.5 - 0.25 + 0.5, -1.0 - 0.25 - 1.5], rtol=1e-6)
    assert next_control(own, server, start, trained, steps=0, lr=0.1) == own  # nothing trained: unchanged


def test_the_control_variate_survives_a_restart_and_a_round_trained_again_starts_from_the_same_one(
    tmp_path: Path,
) -> None:
    server = {"w": np.array([0.25, 0.25], np.float32)}
    start, trained = {"w": np.ones(2, np.float32)}, {"w": np.array([0.8, 1.6], np.float32)}
    control = HospitalControl(LocalState(tmp_path), "fed-1")

    first = control.before(1, server)
    changes = control.after(1, own=first, server=server, start=start, trained=trained, steps=4, lr=0.1)

    assert first["w"].tolist() == [0, 0]
    np.testing.assert_allclose(changes[SCAFFOLD_CONTROL + "w"], [-0.25 + 0.5, -0.25 - 1.5], rtol=1e-6)
    restarted = HospitalControl(LocalState(tmp_path), "fed-1")  # a new process reading the data folder
    assert restarted.before(1, server)["w"].tolist() == [0, 0]  # round 1 again: the c_i it started from
    np.testing.assert_allclose(restarted.before(2, server)["w"], [0.25, -1.75], rtol=1e-6)
    assert HospitalControl(LocalState(tmp_path), "fed-2").before(2, server)["w"].tolist() == [0, 0]


def test_a_scaffold_task_trains_and_returns_the_weights_and_the_control_variates_change(tmp_path: Path) -> None:
    data = HospitalData(tmp_path, "hospital_a", INFO, {"train": split(24)})
    torch.manual_seed(0)
    model = to_numpy(build_model("cnn", 1, 2).state_dict())
    params = [n for n, _ in build_model("cnn", 1, 2).named_parameters()]
    control = {SCAFFOLD_CONTROL + n: np.full(model[n].shape, 0.01, np.float32) for n in params}
    settings = TrainSettings(1, 0.05, 8, seed=1, optimizer="sgd", scaffold=True)
    trainer = Trainer(data, torch.device("cpu"), name="hospital_a", progress=False)

    result = trainer.run(1, settings, ModelSpec("cnn", 1, 2), {**model, **control}, federation="fed")

    weights, changes = split_control(result.state)
    assert weights.keys() == model.keys() and changes.keys() == set(params)
    # c_i was 0, so its change is c_i+ = -c + (x - y) / (K lr), K = 3 batches of 8
    name = params[-1]
    expected = -0.01 + (model[name].astype(np.float64) - weights[name]) / (3 * 0.05)
    np.testing.assert_allclose(changes[name], expected, rtol=1e-4, atol=1e-6)
    assert LocalState(tmp_path / STATE_FOLDER).load("fed", "scaffold") is not None


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        (TrainSettings(1, 0.05, 8, seed=1, optimizer="sgd", scaffold=True, update_encoding="int8"), "int8"),
        (TrainSettings(1, 0.05, 8, seed=1, optimizer="lbfgs"), "optimizer 'lbfgs'"),
    ],
)
def test_a_task_the_hospital_cannot_honour_is_refused_with_the_reason(
    tmp_path: Path, settings: TrainSettings, why: str
) -> None:
    data = HospitalData(tmp_path, "hospital_a", INFO, {"train": split(8)})
    trainer = Trainer(data, torch.device("cpu"), name="hospital_a", progress=False)

    with pytest.raises(TaskError, match=why):
        trainer.run(1, settings, ModelSpec("cnn", 1, 2), to_numpy(build_model("cnn", 1, 2).state_dict()))
