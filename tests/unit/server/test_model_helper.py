"""The coordinator's PyTorch helper (medfed.server.model_helper.host / model_worker) and the coordinator's
promise that it never imports PyTorch itself."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medfed.common.data.folders import DatasetInfo, Split
from medfed.common.data.partition import partition_to_folders
from medfed.common.errors import ConfigError, DataError, DeviceError, UnknownModelError
from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import to_numpy
from medfed.common.ml.training import evaluate
from medfed.common.tensors import encode
from medfed.server.model_helper.host import ModelHost, ModelHostError
from medfed.server.model_helper.protocol import receive, send
from tests.helpers import InProcessModels, synthetic_dataset

INFO = DatasetInfo(dataset="t", channels=1, class_names=("a", "b", "c", "d"), image_size=(12, 12))


def check(host: ModelHost, **changes: object) -> DatasetInfo | None:
    settings: dict[str, object] = {
        "model": "cnn", "dp": False, "test_data": None, "image_size": None, "device": "cpu",
        "pretrained": None, "check_pretrained": True,
    }  # fmt: skip
    settings.update(changes)
    return host.check(**settings)  # type: ignore[arg-type]


def test_messages_and_models_cross_the_pipe_framing_intact() -> None:
    model = encode({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(4)})
    stream = io.BytesIO()

    send(stream, {"op": "x"}, model)
    send(stream, {"op": "y"})
    stream.seek(0)
    first, second, end = receive(stream), receive(stream), receive(stream)

    assert first is not None and first[0]["op"] == "x" and first[1] is not None
    assert all(np.array_equal(first[1].tensors()[k], model.tensors()[k]) for k in ("w", "n"))
    assert second == ({"op": "y"}, None) and end is None


def test_a_cut_off_model_is_an_error_not_a_short_model() -> None:
    stream = io.BytesIO()
    send(stream, {"op": "x"}, encode({"w": np.ones(100, dtype=np.float32)}))
    cut = io.BytesIO(stream.getvalue()[:-10])

    with pytest.raises(EOFError, match="ended after"):
        receive(cut)


def test_the_helper_builds_the_same_first_model_as_pytorch_in_process() -> None:
    with ModelHost() as host:
        assert check(host, device="cpu") is None

        model = host.initial_model(INFO, seed=7)

    expected = InProcessModels("cnn").initial_model(INFO, seed=7).tensors()
    got = model.tensors()
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in expected)


@pytest.fixture
def test_folder(tmp_path: Path) -> Path:
    partition_to_folders(DATASET, tmp_path / "data", clients=2, scheme="iid")
    return tmp_path / "data" / "test"


DATASET = synthetic_dataset(num_classes=4, size=12, per_class=(8, 4, 20))


def test_the_helper_evaluates_like_training_evaluate(test_folder: Path) -> None:
    dataset = DATASET
    torch.manual_seed(1)
    network = build_model("cnn", 1, 4)
    test = dataset.splits["test"]

    with ModelHost() as host:
        info = check(host, test_data=str(test_folder))
        metrics = host.evaluate(encode(to_numpy(network.state_dict())))

    images, labels = test
    expected = evaluate(network, Split(np.ascontiguousarray(images[:, None]), labels), 4, torch.device("cpu"))
    assert info == dataset.info
    assert metrics is not None and metrics.test_examples == len(labels)
    assert metrics.accuracy == pytest.approx(expected.accuracy)
    assert metrics.confusion_matrix == expected.confusion
    assert host.peak_rss_mb is not None and host.peak_rss_mb > 0


def test_without_a_test_set_the_helper_runs_only_to_check_and_to_build_the_first_model() -> None:
    host = ModelHost()
    check(host, model="cnn_gn", dp=True)
    assert host._proc is None  # not kept while hospitals are awaited

    model = host.initial_model(INFO, seed=0)

    assert host._proc is None and "0.weight" in model.tensors()
    assert host.evaluate(encode({"w": np.zeros(1, dtype=np.float32)})) is None
    with pytest.raises(ModelHostError, match="already been closed"):
        host.initial_model(INFO, seed=0)


def test_user_errors_come_back_as_the_same_one_line_errors_and_the_helper_goes_on() -> None:
    refusals: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"dp": True}, ConfigError, "cannot be used with differential privacy"),
        ({"model": "vgg", "dp": True}, UnknownModelError, "unknown model 'vgg'"),
        ({"test_data": "/nonexistent/test"}, DataError, "nonexistent"),
        ({"device": "cuda:7"}, DeviceError, "cuda:7"),
    ]
    with ModelHost() as host:  # one helper answers all of them: a refusal does not end it
        for changes, error, match in refusals:
            with pytest.raises(error, match=match):
                check(host, **changes)


def test_a_pretrained_file_for_another_model_is_refused_at_check(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"head.weight": torch.zeros(3, 3)}, str(path))

    with ModelHost() as host, pytest.raises(ConfigError, match="does not match the model"):
        check(host, pretrained=str(path))


def test_a_helper_that_dies_is_reported_not_waited_for_and_the_next_call_starts_a_new_one(test_folder: Path) -> None:
    with ModelHost() as host:
        check(host, test_data=str(test_folder))
        host._proc.kill()  # type: ignore[union-attr]

        with pytest.raises(ModelHostError, match=r"(exited|failed) during init"):
            host.initial_model(INFO, seed=0)
        metrics = host.evaluate(InProcessModels("cnn").initial_model(INFO, seed=0))  # a new helper, checked again

    assert metrics is not None and metrics.test_examples == len(DATASET.splits["test"][1])


def test_a_check_that_needs_no_pytorch_starts_no_helper_until_the_first_model() -> None:
    with ModelHost() as host:
        assert check(host, device="auto") is None
        assert host._proc is None  # the coordinator listens without waiting for PyTorch to load
        with pytest.raises(UnknownModelError, match="unknown model 'vgg'"):
            check(host, model="vgg")

        model = host.initial_model(INFO, seed=7)

    expected = InProcessModels("cnn").initial_model(INFO, seed=7).tensors()
    assert all(np.array_equal(model.tensors()[k], expected[k]) for k in expected)


def test_the_coordinator_process_never_imports_pytorch() -> None:
    code = (
        "import sys, medfed.server.app, medfed.server.driver, medfed.server.model_helper.host\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'opacus'})\n"
        "print(heavy)"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_reports_its_own_peak_memory_not_its_parents() -> None:
    ballast = bytearray(400 << 20)  # 400 MB resident in this (parent) process
    ballast[::4096] = b"x" * len(range(0, len(ballast), 4096))
    code = "from medfed.server.memory import peak_rss_mb; print(peak_rss_mb())"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert 0 < float(result.stdout) < 200  # ru_maxrss would say >= 400 MB: it inherits the parent's
    del ballast
