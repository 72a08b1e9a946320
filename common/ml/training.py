"""Local training and evaluation on uint8 image tensors, shared by hospitals and the coordinator.

Images stay uint8 in memory and whole batches are normalised on the fly, so there is no per-sample
Python work (no PIL, no Dataset/DataLoader) in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medfed.common.data.folders import Split
from medfed.common.errors import DeviceError, UnusableModel
from medfed.common.limits import LocalOptimizer
from medfed.common.training_plan import NORMALIZATION, lr_factor


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must exist here."""
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise DeviceError(f"--device: unknown device {requested!r}") from None
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            raise DeviceError(f"--device {requested}: no such CUDA device on this machine")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise DeviceError(f"--device {requested}: MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images and labels as tensors sharing the arrays' memory."""
    return torch.from_numpy(split.images), torch.from_numpy(split.labels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - NORMALIZATION["mean"]) / NORMALIZATION["std"]


@dataclass(frozen=True)
class Evaluation:
    num_examples: int
    loss: float
    accuracy: float
    per_class_accuracy: list[float | None]
    """None for a class with no examples in the evaluated split."""
    confusion: list[list[int]] = field(default_factory=list)
    """rows: true class, columns: predicted class"""
    auc: float | None = None
    """macro one-vs-rest ROC AUC (MedMNIST's convention); None when no class has both positives and negatives"""


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    loss: float
    accuracy: float
    steps: int = 0
    """optimizer steps taken (SCAFFOLD's K)"""


def train_local(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: bool = True,
    desc: str = "training",
    augment: bool = False,
    lr_schedule: str = "constant",
    proximal_mu: float = 0.0,
    optimizer: LocalOptimizer = "adam",
    correction: Sequence[torch.Tensor] | None = None,
) -> TrainResult:
    """Adam (or plain SGD) on the hospital's training split for ``epochs`` passes (a fresh optimizer
    every round).

    ``seed`` fixes both the batch order and the global RNG (dropout), so a run is reproducible.
    ``proximal_mu`` > 0 adds FedProx's term μ/2·‖w − w₀‖² to every batch's loss, w₀ being the weights the
    model had when training began (the round's global model); the reported loss leaves it out.
    ``correction``: one tensor per parameter, added to its gradient before every step (SCAFFOLD's
    c − c_i, which steers each hospital's steps towards the federation's average direction)."""
    torch.manual_seed(seed)
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    params = list(model.parameters())
    shifts = [c.to(device) for c in correction] if correction is not None else []
    if correction is not None and len(shifts) != len(params):
        raise ValueError(f"{len(shifts)} gradient corrections for {len(params)} parameters")
    step: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    n = len(split)
    images, labels = tensors(split)
    total_loss, correct, seen = 0.0, 0, 0
    steps = 0
    for epoch in range(epochs):
        for group in step.param_groups:
            group["lr"] = lr * lr_factor(lr_schedule, epoch, epochs)
        order = torch.randperm(n, generator=generator)
        batches = range(0, n, batch_size)
        bar = tqdm(
            batches,
            desc=f"{desc} epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for start in bar:
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on a batch of one
            x = normalize(images[idx]).to(device, non_blocking=True)
            if augment:
                x = random_affine(x, generator)
            y = labels[idx].to(device, non_blocking=True)
            step.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            (loss + proximal_term(model, anchor, proximal_mu) if anchor else loss).backward()
            for param, shift in zip(params, shifts, strict=False):
                if param.grad is not None:
                    param.grad += shift
            step.step()
            steps += 1
            batch_loss = loss.detach().item()
            total_loss += batch_loss * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{batch_loss:.4f}")
    return TrainResult(n, total_loss / max(seen, 1), correct / max(seen, 1), steps)


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's μ/2·‖w − w₀‖² over the trainable parameters (Li et al. 2020); its gradient is μ(w − w₀)."""
    squares = [torch.sum((p - p0) ** 2) for p, p0 in zip(model.parameters(), anchor, strict=True)]
    return 0.5 * mu * torch.stack(squares).sum()


def random_affine(
    x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1, max_degrees: float = 10.0
) -> torch.Tensor:
    """Each image of the batch shifted by up to ``max_shift`` of its size and rotated by up to
    ``max_degrees``, in one grid_sample call (no flips: left and right matter in a chest X-ray)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * max_shift)  # the grid spans [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, num_classes: int, device: torch.device, batch_size: int = 512
) -> Evaluation:
    model.to(device).eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    total_loss = 0.0
    probabilities = []
    images, labels = tensors(split)
    for start in range(0, len(split), batch_size):
        x = normalize(images[start : start + batch_size]).to(device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += float(loss_fn(logits, y))
        probabilities.append(torch.softmax(logits.float(), 1).cpu())
        pred = logits.argmax(1)
        confusion += torch.bincount(y.cpu() * num_classes + pred.cpu(), minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    n = len(split)
    per_class_total = confusion.sum(1)
    per_class = [
        float(confusion[c, c]) / float(per_class_total[c]) if per_class_total[c] else None for c in range(num_classes)
    ]
    accuracy = float(confusion.diag().sum()) / n if n else 0.0
    scores = torch.cat(probabilities).numpy() if n else np.empty((0, num_classes))
    if not (math.isfinite(total_loss) and np.isfinite(scores).all()):
        raise UnusableModel(f"the model's outputs on {n} images are not finite numbers (NaN or infinite)")
    auc = macro_auc(split.labels, scores) if n else None
    return Evaluation(n, total_loss / n if n else 0.0, accuracy, per_class, confusion.tolist(), auc)


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """The mean over classes of the one-vs-rest AUC, skipping classes absent from (or the only class of)
    ``labels``; for two classes it equals the usual AUC of the positive class's score."""
    from sklearn.metrics import roc_auc_score

    scores = [
        float(roc_auc_score(labels == c, probabilities[:, c]))
        for c in range(probabilities.shape[1])
        if 0 < int((labels == c).sum()) < len(labels)
    ]
    return float(np.mean(scores)) if scores else None
