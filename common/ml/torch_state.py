"""PyTorch state_dicts to and from the numpy arrays the wire, the aggregation and the checkpoints use.

Hospitals train with PyTorch; everything else (serialisation, FedAvg, differential privacy, files)
works on numpy so that the coordinator never has to import PyTorch. Both directions share memory
with their input where they can (CPU tensors and writable arrays), so converting costs no copy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from medfed.common.tensors import BFLOAT16, StateDict


def to_numpy(state: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    for name, tensor in state.items():
        value = tensor.detach().to("cpu")
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16 of its own: same bits, ml_dtypes' type
            out[name] = value.view(torch.int16).numpy().view(BFLOAT16)
        else:
            out[name] = value.numpy()
    return out


def to_torch(state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, array in state.items():
        writable = array if array.flags.writeable else array.copy()  # torch.from_numpy needs writable memory
        if array.dtype == BFLOAT16:
            out[name] = torch.from_numpy(writable.view(np.int16)).view(torch.bfloat16)
        else:
            out[name] = torch.from_numpy(writable)
    return out


NORMALIZATION_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
"""BatchNorm and InstanceNorm (both ``_NormBase``), GroupNorm, LayerNorm: FedBN's local layers"""


def normalization_names(model: nn.Module) -> list[str]:
    """The state_dict names of every normalisation layer's weights, biases and running statistics."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, NORMALIZATION_LAYERS)
        for name in module.state_dict()
    ]
