"""What the coordinator and the hospitals agree on about training without PyTorch: the input
normalisation (written into the final model's metadata) and the learning-rate schedule over rounds.

The coordinator process never imports PyTorch (its libraries alone would cost ~500 MB resident), so
these live outside common/ml/, which both the hospitals' training and the coordinator's helper use.
"""

from __future__ import annotations

import math

NORMALIZATION = {"mean": 0.5, "std": 0.5}


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate's multiplier at ``step`` (0-based) of ``total``: constant, or cosine decay from 1
    towards 0 (Loshchilov & Hutter 2017), the same curve over rounds in the federation and over epochs
    in the baselines."""
    if schedule == "constant" or total <= 1:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * step / total))
