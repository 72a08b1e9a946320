"""The federation's two yardsticks: each hospital training alone, and all images pooled in one place.

Both train the same architecture with the same optimiser settings for the same total number of
epochs as the federation (rounds x local epochs), and are tested on the same held-out test set.
Pooling is what the law forbids in practice; it is the upper bound the federation is measured against.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfed.common.data.folders import DatasetInfo, Split
from medfed.common.ml.models import build_model
from medfed.common.ml.pretrained import load_pretrained
from medfed.common.ml.training import evaluate, train_local

log = logging.getLogger("medfed.study")


@dataclass(frozen=True)
class Outcome:
    """One model's results on the common test set."""

    name: str
    accuracy: float
    auc: float | None
    per_class_accuracy: dict[str, float | None]
    train_images: int
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pooled(splits: Sequence[Split]) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def train_and_test(
    name: str,
    train: Split,
    test: Split,
    info: DatasetInfo,
    *,
    model: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    pretrained: Path | None = None,
    progress: bool = True,
    augment: bool = False,
    lr_schedule: str = "constant",
) -> Outcome:
    started = time.monotonic()
    torch.manual_seed(seed)
    network = build_model(model, info.channels, info.num_classes)
    if pretrained is not None:
        load_pretrained(network, pretrained)
    log.info("%s: training %s on %d images for %d epoch(s)", name, model, len(train), epochs)
    train_local(network, train, epochs=epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
                progress=progress, desc=name, augment=augment,
                lr_schedule=lr_schedule)  # fmt: skip
    result = evaluate(network, test, info.num_classes, device)
    seconds = time.monotonic() - started
    log.info("%s: test accuracy %.4f, macro AUC %s (%.0f s)", name, result.accuracy,
             f"{result.auc:.4f}" if result.auc is not None else "-", seconds)  # fmt: skip
    per_class = dict(zip(info.class_names, result.per_class_accuracy, strict=True))
    return Outcome(name, result.accuracy, result.auc, per_class, len(train), round(seconds, 1))
