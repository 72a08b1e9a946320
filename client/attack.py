"""Simulated poisoning, for research on defences only (``fed-client --simulate-attack``; off by default).

A hospital that runs with it misbehaves the way the poisoning literature's attackers do, so that a
study can show a robust strategy holding (or not). Every round logs a warning that it is a simulation.

- ``label-flip`` (data poisoning): trains on labels c -> C - 1 - c.
- ``sign-flip``: sends global − Δ instead of global + Δ (Δ: what local training changed).
- ``scale:K``: sends global + K·Δ (a boosted update, as in model replacement).
- ``gaussian:SIGMA``: sends global + N(0, SIGMA²) per coordinate, ignoring its training.

The update attacks change only the model's parameters: BatchNorm's running statistics and counters
are sent as trained (a negative variance would be refused by the coordinator at once, which would
make the attack a dropout instead of a poisoning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from medfed.common.data.folders import Split
from medfed.common.dp.mechanisms import secure_generator
from medfed.common.errors import ConfigError
from medfed.common.tensors import StateDict, is_float

log = logging.getLogger("medfed.client")

AttackKind = Literal["label-flip", "sign-flip", "scale", "gaussian"]
STATISTICS = ("running_mean", "running_var")


@dataclass(frozen=True)
class Attack:
    kind: AttackKind
    amount: float = 1.0
    """K for scale, SIGMA for gaussian"""

    def describe(self) -> str:
        return {
            "label-flip": "training on flipped labels",
            "sign-flip": "sending its update with the sign flipped",
            "scale": f"sending its update scaled by {self.amount:g}",
            "gaussian": f"sending Gaussian noise (σ = {self.amount:g}) instead of its update",
        }[self.kind]


def parse_attack(text: str) -> Attack:
    """``label-flip``, ``sign-flip``, ``scale:K`` or ``gaussian:SIGMA``; ConfigError naming the flag."""
    name, _, value = text.partition(":")
    if name in ("label-flip", "sign-flip") and not value:
        return Attack(name)  # type: ignore[arg-type]
    if name in ("scale", "gaussian") and value:
        try:
            amount = float(value)
        except ValueError:
            amount = float("nan")
        if np.isfinite(amount) and (amount > 0 if name == "gaussian" else amount != 0):
            return Attack(name, amount)  # type: ignore[arg-type]
    raise ConfigError(
        f"--simulate-attack {text!r}: give label-flip, sign-flip, scale:K (K a non-zero number) or "
        "gaussian:SIGMA (SIGMA > 0)"
    )


def flip_labels(split: Split, num_classes: int) -> Split:
    return replace(split, labels=(num_classes - 1 - split.labels).astype(split.labels.dtype))


def _attacked(name: str, dtype: np.dtype) -> bool:
    return is_float(dtype) and not name.endswith(STATISTICS)


def poison_update(
    attack: Attack,
    trained: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    generator: np.random.Generator | None = None,
) -> StateDict:
    """What the attacker sends instead of ``trained`` (``received``: the round's global model)."""
    if attack.kind == "label-flip":
        return dict(trained)
    rng = generator or secure_generator()
    out: StateDict = {}
    for name, value in trained.items():
        base = received[name]
        if not _attacked(name, base.dtype):
            out[name] = value
            continue
        delta = value.astype(np.float64) - base
        if attack.kind == "sign-flip":
            sent = base - delta
        elif attack.kind == "scale":
            sent = base + attack.amount * delta
        else:
            sent = base + rng.normal(0.0, attack.amount, size=base.shape)
        out[name] = np.asarray(sent.astype(base.dtype))
    return out
