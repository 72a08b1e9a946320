"""Our ResNet-18 against torchvision's: same tensors, same initial weights for a seed, same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfed.common.ml.models import build_model, group_norm

tv_models = pytest.importorskip("torchvision.models")


def torchvision_resnet18(in_channels: int, num_classes: int, norm: type[nn.Module] | object) -> nn.Module:
    """What medfed built before it had its own copy: torchvision's model with conv1 replaced."""
    model: nn.Module = tv_models.resnet18(weights=None, num_classes=num_classes, norm_layer=norm)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@pytest.mark.parametrize(("name", "norm"), [("resnet18", nn.BatchNorm2d), ("resnet18_gn", group_norm)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet18_matches_torchvision_weights_and_outputs(name: str, norm: object, in_channels: int) -> None:
    torch.manual_seed(7)
    ours = build_model(name, in_channels, 4)
    torch.manual_seed(7)
    theirs = torchvision_resnet18(in_channels, 4, norm)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, in_channels, 32, 32)

    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    with torch.no_grad():
        ours_out, theirs_out = ours(x), theirs(x)

    assert list(ours_state) == list(theirs_state)
    for key, value in theirs_state.items():
        assert torch.equal(ours_state[key], value), key
    assert torch.equal(ours_out, theirs_out)


def test_building_resnet18_does_not_import_torchvision() -> None:
    import subprocess
    import sys

    code = "import sys; from medfed.common.ml.models import build_model; build_model('resnet18', 1, 2); " \
           "print('torchvision' in sys.modules)"  # fmt: skip

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"
