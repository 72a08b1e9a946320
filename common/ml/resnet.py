"""ResNet-18 (He et al. 2016), written out so that no process needs torchvision to build it.

Importing torchvision costs about 160 MB of memory and a second of start-up in every process, and its
compiled operators must match the installed torch exactly (a CPU-only torch next to PyPI's
torchvision does not even import). The layers, their names and their initialisation follow
torchvision's ``resnet18``, so state dicts, checkpoints and torchvision's published weights load into
either; tests/unit/common/test_models.py checks both against torchvision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Norm = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: Norm, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


def _layer(cin: int, cout: int, stride: int, norm: Norm) -> nn.Sequential:
    downsample = None
    if stride != 1 or cin != cout:  # built before the block, as torchvision does
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm(cout))
    return nn.Sequential(BasicBlock(cin, cout, stride, norm, downsample), BasicBlock(cout, cout, 1, norm))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        # Built for 3 channels and replaced at the end, as medfed did with torchvision's model: the
        # random number generator is drawn in the same order, so a seed gives the same weights as before.
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 1, norm)
        self.layer2 = _layer(64, 128, 2, norm)
        self.layer3 = _layer(128, 256, 2, norm)
        self.layer4 = _layer(256, 512, 2, norm)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits
