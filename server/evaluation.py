"""Evaluating the global model on the coordinator's held-out test set after every round."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medfed.common.data import DatasetInfo, Split
from medfed.common.models import build_model
from medfed.common.training import evaluate


class Evaluator:
    def __init__(self, test: Split, info: DatasetInfo, model_name: str, device: torch.device) -> None:
        self._test = test
        self._info = info
        self._device = device
        self._model = build_model(model_name, info.channels, info.num_classes)

    def __call__(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        self._model.load_state_dict(state)
        result = evaluate(self._model, self._test, self._info.num_classes, self._device)
        return {
            "loss": result.loss,
            "accuracy": result.accuracy,
            "auc": result.auc,
            "per_class_accuracy": dict(zip(self._info.class_names, result.per_class_accuracy, strict=True)),
            "test_examples": result.num_examples,
            "confusion_matrix": result.confusion,
        }
