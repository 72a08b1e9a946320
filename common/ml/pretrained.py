"""Starting weights from a local file (``--pretrained``): never a download at run time.

Accepts a state_dict in a .safetensors file, or in a .pt/.pth file read with ``weights_only=True``
(torchvision's published ResNet-18 file is such a state_dict; nothing is unpickled beyond tensors).
The first convolution is adapted to the data's channels (ImageNet's RGB filters summed for grey
images) and the classifier, made for another set of classes, is left freshly initialised. A file that
fits less than half of the model is refused: it was made for another architecture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medfed.common.errors import ConfigError

log = logging.getLogger("medfed.model")

MIN_MATCHED_SHARE = 0.5


@dataclass(frozen=True)
class PretrainedFit:
    loaded: int
    adapted: list[str]
    fresh: list[str]
    """the model's tensors the file did not provide or did not fit (initialised as usual)"""
    share: float
    """fraction of the model's parameters (by element) that came from the file"""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"--pretrained: {path} does not exist (weights are never downloaded at run time)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zipfile and the unpickler each raise their own types
        raise ConfigError(f"--pretrained: {path} is not a readable weights file: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its state_dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--pretrained: {path} does not hold a state_dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _adapt(name: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``source`` reshaped to ``target``'s shape where that is meaningful, else None."""
    if source.shape == target.shape:
        return source
    if source.dim() == 4 and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]:
        # a first convolution made for another number of input channels
        mean = source.mean(dim=1, keepdim=True)
        scale = source.shape[1] / target.shape[1]
        return (mean * scale).expand(-1, target.shape[1], -1, -1).clone()
    return None


def load_pretrained(model: nn.Module, path: Path) -> PretrainedFit:
    """Copy the file's tensors into ``model`` where they fit; ConfigError when the file is for another model."""
    source = read_state_dict(path)
    state = model.state_dict()
    adapted, fresh, matched_elements = [], [], 0
    total_elements = sum(p.numel() for p in model.parameters())
    parameter_names = {name for name, _ in model.named_parameters()}
    for name, target in state.items():
        value = source.get(name)
        fitted = (
            _adapt(name, value, target)
            if value is not None and value.dtype.is_floating_point == target.dtype.is_floating_point
            else None
        )
        if fitted is None:
            fresh.append(name)
            continue
        if fitted is not value:
            adapted.append(name)
        state[name] = fitted.to(target.dtype)
        if name in parameter_names:
            matched_elements += target.numel()
    share = matched_elements / max(total_elements, 1)
    if share < MIN_MATCHED_SHARE:
        example = next((n for n in fresh if n in parameter_names), "?")
        have = source.get(example)
        raise ConfigError(
            f"--pretrained: {path} does not match the model: only {share:.0%} of its parameters fit "
            f"(e.g. {example}: the model has {tuple(state[example].shape) if example in state else '?'}, the file "
            f"{tuple(have.shape) if have is not None else 'nothing'}); was it saved for another architecture?"
        )
    model.load_state_dict(state)
    loaded = len(state) - len(fresh)
    log.info(
        "--pretrained %s: %d tensors loaded (%.0f%% of the parameters)%s%s",
        path, loaded, 100 * share,
        f", adapted to the data's channels: {', '.join(adapted)}" if adapted else "",
        f", freshly initialised: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}" if fresh else "",
    )  # fmt: skip
    return PretrainedFit(loaded, adapted, fresh, share)
