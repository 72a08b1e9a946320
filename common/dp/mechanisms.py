"""Differential privacy as plain functions over state_dicts: difference, clip, noise.

Used by hospitals (local DP on their update) and by the coordinator (central DP on each update and
the aggregate); no transport and no accounting here (that is medfed.common.dp.accounting).

Noise is drawn from a generator seeded with fresh operating-system entropy: a noise stream that
could be replayed from a known seed (such as the run's ``--seed``) could be subtracted again, so DP
rounds are never reproducible bit for bit. Tests pass their own seeded generator.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medfed.common.tensors import StateDict, is_float

Mechanism = Literal["local", "dp_sgd", "central"]
HospitalMechanism = Literal["local", "dp_sgd"]
"""what a hospital runs itself (central DP is the coordinator's)"""

MECHANISM_TEXT: dict[str, str] = {
    "local": "local DP (clipped, noised update)",
    "dp_sgd": "DP-SGD (per-patient clipping and noise)",
    "central": "central DP (coordinator clips each update, noises the aggregate)",
}


@dataclass(frozen=True)
class DpSettings:
    """One mechanism's knobs: the L2 clipping bound C and the noise multiplier σ (noise std = σC)."""

    mechanism: Mechanism
    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"the clipping bound must be a positive number, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"the noise multiplier must be zero or more, got {self.noise_multiplier}")

    def describe(self) -> str:
        return f"{MECHANISM_TEXT[self.mechanism]}, C={self.clip:g}, σ={self.noise_multiplier:g}"


def secure_generator() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def difference(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> StateDict:
    """Δ = local − base over the floating-point tensors, in float64 (the other tensors carry no update)."""
    return {k: np.asarray(np.subtract(local[k], v, dtype=np.float64)) for k, v in base.items() if is_float(v.dtype)}


def l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """The norm of the whole update seen as one vector."""
    total = 0.0
    for t in update.values():
        flat = np.asarray(t, dtype=np.float64).reshape(-1)
        total += float(flat @ flat)
    return math.sqrt(total)


def clip_update(update: Mapping[str, np.ndarray], clip: float) -> tuple[StateDict, float]:
    """Scale the update to L2 norm at most ``clip``; returns the result and the norm before clipping."""
    norm = l2_norm(update)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: np.asarray(v * factor) for k, v in update.items()}, norm


def add_gaussian_noise(update: Mapping[str, np.ndarray], std: float, generator: np.random.Generator) -> StateDict:
    """Independent N(0, std²) on every coordinate; std = 0 returns the update unchanged."""
    if std == 0:
        return dict(update)
    return {k: np.asarray(v + generator.normal(0.0, std, size=v.shape)) for k, v in update.items()}


def apply_update(base: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> StateDict:
    """base + update, in base's dtypes; tensors without an update keep base's value."""
    out: StateDict = {}
    for k, v in base.items():
        out[k] = np.asarray((v.astype(np.float64) + update[k]).astype(v.dtype)) if k in update else v.copy()
    return out


def privatize_update(
    local: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    settings: DpSettings,
    generator: np.random.Generator,
) -> tuple[StateDict, float]:
    """Local DP on a hospital's new weights: base + clip_C(local − base) + N(0, (σC)²).

    Returns the weights to send and the update's norm before clipping (for the hospital's log)."""
    clipped, norm = clip_update(difference(local, base), settings.clip)
    noised = add_gaussian_noise(clipped, settings.noise_multiplier * settings.clip, generator)
    return apply_update(base, noised), norm
