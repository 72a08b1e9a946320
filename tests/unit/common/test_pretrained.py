from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18 as tv_resnet18

from medfed.common.errors import ConfigError
from medfed.common.ml.models import build_model
from medfed.common.ml.pretrained import load_pretrained


def test_an_imagenet_resnet18_file_starts_a_grey_four_class_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    imagenet = tv_resnet18(weights=None, num_classes=1000).state_dict()  # the layout of resnet18-f37072fd.pth
    torch.save(imagenet, tmp_path / "resnet18.pth")
    model = build_model("resnet18", 1, 4)

    fit = load_pretrained(model, tmp_path / "resnet18.pth")

    state = model.state_dict()
    assert torch.allclose(state["conv1.weight"], imagenet["conv1.weight"].sum(1, keepdim=True), atol=1e-6)
    assert torch.equal(state["layer3.1.conv2.weight"], imagenet["layer3.1.conv2.weight"])
    assert fit.fresh == ["fc.weight", "fc.bias"] and fit.adapted == ["conv1.weight"] and fit.share > 0.95


def test_a_previous_runs_model_loads_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    previous = build_model("cnn", 1, 3).state_dict()
    save_file({k: v.contiguous() for k, v in previous.items()}, str(tmp_path / "model.safetensors"))
    model = build_model("cnn", 1, 3)

    fit = load_pretrained(model, tmp_path / "model.safetensors")

    assert fit.fresh == [] and all(torch.equal(v, previous[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: torch.save(tv_resnet18(weights=None).state_dict(), p), r"does not match the model: only 0% .*"),
        (lambda p: p.write_bytes(b"garbage"), r"is not a readable weights file"),
        (lambda p: torch.save({"epochs": 3}, p), r"does not hold a state_dict"),
        (lambda p: torch.save(torch.nn.Linear(2, 2), p), r"is not a readable weights file"),  # a pickled object
    ],
)
def test_files_for_other_models_or_not_weights_at_all_are_refused(
    tmp_path: Path, write: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "weights.pth"
    write(path)

    with pytest.raises(ConfigError, match=message):
        load_pretrained(build_model("cnn", 1, 3), path)
