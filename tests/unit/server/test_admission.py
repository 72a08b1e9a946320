"""What the coordinator accepts beyond an update's form: each refusal below once ended a run or
poisoned its model (a sign-flipped BatchNorm model, an int8 delta with a huge scale)."""

from dataclasses import replace

import numpy as np
import pytest

from medfed.common.compression import DecodedUpdate, IncompatibleUpdate, check_form, encode_update
from medfed.common.data.folders import DatasetInfo
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.tensors import encode, from_chunks, layout_of
from medfed.server.admission import first_unusable, refusal
from medfed.server.coordinator import Coordinator
from medfed.server.errors import InvalidUpdate
from medfed.server.rounds import Task
from medfed.server.strategy.fedavg import FedAvg

INFO = DatasetInfo(dataset="d", channels=1, class_names=("a", "b"), image_size=(8, 8))
MODEL = {
    "conv.weight": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "bn.running_mean": np.zeros(3, dtype=np.float32),
    "bn.running_var": np.ones(3, dtype=np.float32),
    "bn.num_batches_tracked": np.array(5, dtype=np.int64),
}


def sign_flipped(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: -v for k, v in state.items()}


def test_an_honest_update_passes_and_each_poisoned_one_is_refused_with_its_reason() -> None:
    honest = {k: v * 0.9 if v.dtype.kind == "f" else v + 1 for k, v in MODEL.items()}
    flipped = sign_flipped(MODEL)
    nan = {**MODEL, "conv.weight": np.full((3, 4), np.nan, dtype=np.float32)}

    def values(state: dict[str, np.ndarray]) -> DecodedUpdate:
        return DecodedUpdate(state, layout_of(state), MODEL)

    assert refusal(honest, values(honest), MODEL) is None
    assert "holds negative variances" in (refusal(flipped, values(flipped), MODEL) or "")
    assert "'conv.weight' holds NaN" in (refusal(nan, values(nan), MODEL) or "")
    negative_count = {**honest, "bn.num_batches_tracked": np.array(-3, dtype=np.int64)}
    assert "negative count" in (refusal(negative_count, values(negative_count), MODEL) or "")


def test_an_int8_delta_that_rebuilds_beyond_float32_is_refused() -> None:
    encoded = encode_update(MODEL, MODEL, "int8")
    q = from_chunks(encoded.layout, encoded.chunks())
    scales = {t.name: t.delta_scale for t in encoded.layout.tensors}
    q["conv.weight"][...] = 127
    huge = [replace(t, delta_scale=3e36) if t.name == "conv.weight" else t for t in encoded.layout.tensors]
    layout = replace(encoded.layout, tensors=tuple(huge))
    rebuilt = DecodedUpdate(q, layout, MODEL)

    assert scales["conv.weight"] > 0
    assert "leaves the range of float32" in (refusal(q, rebuilt, MODEL) or "")


def test_an_int8_delta_scale_that_cannot_fit_float32_is_refused_from_the_header() -> None:
    encoded = encode_update(MODEL, MODEL, "int8")
    specs = tuple(replace(t, delta_scale=1e37) if t.delta_scale else t for t in encoded.layout.tensors)

    with pytest.raises(IncompatibleUpdate, match=r"scale of 1e\+37: its deltas would leave the range of float32"):
        check_form(replace(encoded.layout, tensors=specs), layout_of(MODEL), "int8", delta=True)


def test_the_coordinator_refuses_a_sign_flipped_update_and_keeps_the_honest_average() -> None:
    coordinator = Coordinator(data_info=INFO)
    honest, hostile = coordinator.join("honest", 10, INFO), coordinator.join("hostile", 10, INFO)
    task = Task(1, 1, TrainSettings(1, 1e-3, 8, 0), ModelSpec("cnn", 1, 2), encode(MODEL))
    coordinator.open_round(task, ["honest", "hostile"], FedAvg().begin(MODEL))

    with pytest.raises(InvalidUpdate, match="negative variances"):
        coordinator.submit_update(hostile, 1, 10, {}, sign_flipped(MODEL))
    coordinator.submit_update(honest, 1, 10, {}, MODEL)
    outcome = coordinator.close_round()

    assert [c.name for c in outcome.contributions] == ["honest"]
    assert all(np.array_equal(outcome.accumulator.result()[k], v) for k, v in MODEL.items())


def test_an_aggregate_with_an_infinity_is_named() -> None:
    assert first_unusable(MODEL) is None
    assert first_unusable({**MODEL, "bn.running_mean": np.array([0, np.inf, 0], dtype=np.float32)}) == "bn.running_mean"
