"""The model registry. Channels and classes come from the data's manifest, so one name fits any dataset.

Each architecture comes in two forms: with BatchNorm (the usual choice) and with GroupNorm (``_gn``).
Differential privacy needs the GroupNorm form: BatchNorm mixes the examples of a batch (so DP-SGD
cannot bound one patient's influence) and keeps running statistics computed from patient data
outside the clipped and noised update.

ResNet-18 is our own copy of torchvision's (common/resnet.py), so no process imports torchvision.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medfed.common.errors import UnknownModelError
from medfed.common.limits import MODEL_NAMES
from medfed.common.ml.resnet import ResNet18

Norm = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.Module:
    """32 groups where the width allows (Wu & He 2018), fewer for narrow layers."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(min(groups, channels), channels)


def small_cnn(in_channels: int, num_classes: int, width: int = 32, norm: Norm = nn.BatchNorm2d) -> nn.Module:
    """Three conv blocks and global average pooling: works for any image from 8x8 to 224x224."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, width),
        nn.MaxPool2d(2, ceil_mode=True),
        *block(width, 2 * width),
        nn.MaxPool2d(2, ceil_mode=True),
        *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4 * width, num_classes),
    )


def resnet18(in_channels: int, num_classes: int, norm: Norm = nn.BatchNorm2d) -> nn.Module:
    """torchvision's ResNet-18 layout with its first convolution taking ``in_channels`` (11.2M parameters)."""
    return ResNet18(in_channels, num_classes, norm)


_REGISTRY: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn": small_cnn,
    "cnn_gn": lambda c, k: small_cnn(c, k, norm=group_norm),
    "resnet18": resnet18,
    "resnet18_gn": lambda c, k: resnet18(c, k, norm=group_norm),
}


def build_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
    return factory(in_channels, num_classes)


def dp_model_problem(model: nn.Module) -> str | None:
    """Why a model cannot be trained under DP, or None when it can.

    Buffers (BatchNorm's running statistics) are computed from patient data and would travel outside
    the clipped and noised update."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        kinds = sorted({type(m).__name__ for m in model.modules() if any(True for _ in m.buffers(recurse=False))})
        return (
            f"it keeps statistics of the training data outside its weights ({', '.join(kinds)}: "
            f"{len(buffers)} buffers), which differential privacy cannot cover; use a GroupNorm model "
            "(cnn_gn or resnet18_gn)"
        )
    return None
