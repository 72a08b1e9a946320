"""FedBN on the hospital's side: its own normalisation layers, kept through rounds and restarts."""

from pathlib import Path

import numpy as np
import torch

from medfed.client.local_state import STATE_FOLDER, LocalState
from medfed.client.trainer import NORMALIZATION_KIND, Trainer
from medfed.common.data.folders import DatasetInfo, HospitalData, Split
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import normalization_names, to_numpy

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
SPEC = ModelSpec("cnn", 1, 2)
FEDBN = TrainSettings(1, 1e-3, 16, seed=1, local_normalization=True)


def hospital(folder: Path, state_dir: Path | None = None) -> Trainer:
    rng = np.random.default_rng(0)
    train = Split(rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8), np.arange(16) % 2)
    data = HospitalData(folder, "hospital_a", INFO, {"train": train})
    return Trainer(data, torch.device("cpu"), name="h", state_dir=state_dir)


def test_a_hospital_keeps_its_own_normalisation_through_rounds_and_restarts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, 2)
    norms = normalization_names(model)
    global_model = to_numpy(model.state_dict())

    first = hospital(tmp_path).run(1, FEDBN, SPEC, global_model, federation="fed").state
    kept = LocalState(tmp_path / STATE_FOLDER).load("fed", NORMALIZATION_KIND)
    assert kept is not None and sorted(kept.tensors) == sorted(norms)
    # round 2's global model has normalisation statistics far from this hospital's (averaged elsewhere)
    far = {k: (v + 1000).astype(v.dtype) if k.endswith("running_mean") else v for k, v in first.items()}
    second = hospital(tmp_path).run(2, FEDBN, SPEC, far, federation="fed").state  # a restarted hospital
    plain = hospital(tmp_path / "other").run(2, TrainSettings(1, 1e-3, 16, seed=1), SPEC, far).state

    mean = next(n for n in norms if n.endswith("running_mean"))
    # BatchNorm's running mean moves 10% towards each batch: from its own (about 0) it stays near 0,
    # from the global model's (about 1000) it would stay near 900, as it does without FedBN
    assert np.abs(second[mean]).max() < 100
    assert plain[mean].min() > 800
    weight = next(n for n in global_model if n.endswith("weight") and n not in norms)
    assert not np.allclose(second[weight], first[weight])  # the shared layers did come from the global model


def test_a_new_federation_starts_from_the_global_models_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    global_model = to_numpy(build_model("cnn", 1, 2).state_dict())
    hospital(tmp_path).run(1, FEDBN, SPEC, global_model, federation="fed-1")
    far = {k: (v + 1000).astype(v.dtype) if k.endswith("running_mean") else v for k, v in global_model.items()}

    state = hospital(tmp_path).run(1, FEDBN, SPEC, far, federation="fed-2").state

    mean = next(n for n in state if n.endswith("running_mean"))
    assert state[mean].min() > 800


def test_state_dir_keeps_the_layers_outside_a_read_only_data_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    global_model = to_numpy(build_model("cnn", 1, 2).state_dict())

    hospital(tmp_path / "data", state_dir=tmp_path / "kept").run(1, FEDBN, SPEC, global_model, federation="fed")

    assert LocalState(tmp_path / "kept").load("fed", NORMALIZATION_KIND) is not None
    assert not (tmp_path / "data").exists()
