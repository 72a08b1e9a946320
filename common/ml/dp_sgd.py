"""DP-SGD on a hospital's images with Opacus: per-patient gradient clipping and Gaussian noise.

Batches are Poisson-sampled (each image joins each step with probability q = batch / n), which is
what the accountant assumes; the sampling and the noise draw from fresh OS entropy rather than the
run's seed, so an observer who knows the seed learns nothing about either. Opacus's GradSampleModule
computes per-example gradients and its DPOptimizer clips and noises them; the loop stays ours so
images stay uint8 tensors in memory (no DataLoader).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from medfed.common.data.folders import Split
from medfed.common.ml.training import TrainResult, normalize, tensors


@dataclass(frozen=True)
class DpSgdPlan:
    sampling_rate: float
    steps: int


def plan_dp_sgd(num_examples: int, batch_size: int, epochs: int) -> DpSgdPlan:
    """q = batch / n and n / batch steps per epoch (in expectation one pass over the data per epoch)."""
    q = min(1.0, batch_size / max(num_examples, 1))
    steps_per_epoch = max(1, round(1 / q))
    return DpSgdPlan(q, steps_per_epoch * epochs)


def wrap_problem(model: nn.Module) -> str | None:
    """Why Opacus cannot compute per-example gradients for this model, or None."""
    from opacus.validators import ModuleValidator

    training = model.training
    model.train()  # Opacus validates models as they train
    errors = ModuleValidator.validate(model, strict=False)
    model.train(training)
    if not errors:
        return None
    first = str(errors[0]).split(".")[0]
    return f"{first} (use a GroupNorm model: cnn_gn or resnet18_gn)"


def train_dp_sgd(
    model: nn.Module,
    split: Split,
    *,
    plan: DpSgdPlan,
    lr: float,
    clip: float,
    noise_multiplier: float,
    device: torch.device,
    progress: bool = True,
    desc: str = "DP-SGD",
) -> TrainResult:
    """``plan.steps`` Adam steps on noised, per-example-clipped gradients (mean reduction)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = len(split)
    model.to(device).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about its non-cryptographic RNG: see the module docstring
        wrapped = GradSampleModule(model)
        optimizer = DPOptimizer(
            torch.optim.Adam(wrapped.parameters(), lr=lr),
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip,
            expected_batch_size=max(1, round(plan.sampling_rate * n)),
            generator=torch.Generator(device=device).manual_seed(secrets.randbits(63)),
        )
    sampler = torch.Generator().manual_seed(secrets.randbits(63))
    images, labels = tensors(split)
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        for _ in tqdm(range(plan.steps), desc=desc, unit="step", disable=not progress, leave=False):
            idx = (torch.rand(n, generator=sampler) < plan.sampling_rate).nonzero().flatten()
            x = normalize(images[idx]).to(device)
            y = labels[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty Poisson batch still takes its (noise-only) step
                logits = wrapped(x)
                loss = loss_fn(logits, y)
                loss.backward()
            optimizer.step()
            if len(idx):
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(idx)
    finally:
        wrapped._close()  # remove Opacus's hooks: the same model object trains again next round
    return TrainResult(n, total_loss / max(seen, 1), correct / max(seen, 1))
