"""Splitting a dataset's labels among hospitals: pure functions of (labels, scheme, seed).

Every scheme is a class-by-hospital proportion matrix P (rows sum to 1): class c's examples are
shuffled and cut among the hospitals in the proportions P[c]. The same P splits the training and the
validation set, so a hospital's validation data looks like its training data.
- iid: P[c, k] = 1/K, a stratified random split.
- dirichlet: P[c] ~ Dirichlet(alpha); small alpha gives strongly skewed hospitals.
- exclude-classes: the reference study; hospital i never sees class i (hospitals past the number of
  classes miss nothing), every other class is shared equally.
"""

from __future__ import annotations

import string

import numpy as np

from medfed.common.errors import PartitionError

SCHEMES = ("iid", "dirichlet", "exclude-classes")


def hospital_names(count: int) -> list[str]:
    """hospital_a ... hospital_z, then hospital_aa, hospital_ab, ... (spreadsheet-column style)."""
    names = []
    for i in range(count):
        letters = ""
        n = i + 1
        while n:
            n, rem = divmod(n - 1, 26)
            letters = string.ascii_lowercase[rem] + letters
        names.append(f"hospital_{letters}")
    return names


def class_proportions(
    scheme: str, num_classes: int, num_clients: int, *, alpha: float = 0.5, rng: np.random.Generator
) -> np.ndarray:
    if num_clients < 1:
        raise PartitionError(f"need at least one hospital, got {num_clients}")
    if scheme == "iid":
        return np.full((num_classes, num_clients), 1.0 / num_clients)
    if scheme == "dirichlet":
        if alpha <= 0:
            raise PartitionError(f"--alpha must be positive, got {alpha}")
        return rng.dirichlet(np.full(num_clients, alpha), size=num_classes)
    if scheme == "exclude-classes":
        if num_clients < 2:
            raise PartitionError("exclude-classes needs at least 2 hospitals")
        allowed = np.ones((num_classes, num_clients))
        for k in range(min(num_classes, num_clients)):
            allowed[k, k] = 0.0
        result: np.ndarray = allowed / allowed.sum(axis=1, keepdims=True)
        return result
    raise PartitionError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def split_by_proportions(labels: np.ndarray, proportions: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of ``labels`` for each hospital, sorted; every index goes to exactly one hospital."""
    num_classes, num_clients = proportions.shape
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.floor(np.cumsum(proportions[c])[:-1] * len(idx) + 1e-9).astype(int)
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]


def partition(
    labels_by_split: dict[str, np.ndarray],
    *,
    num_clients: int,
    num_classes: int,
    scheme: str,
    alpha: float = 0.5,
    seed: int = 0,
    max_attempts: int = 100,
) -> dict[str, list[np.ndarray]]:
    """Per split, the indices each hospital gets. Dirichlet draws are repeated (deterministically) until
    every hospital has at least one training example."""
    rng = np.random.default_rng(seed)
    for _ in range(max_attempts):
        proportions = class_proportions(scheme, num_classes, num_clients, alpha=alpha, rng=rng)
        result = {split: split_by_proportions(labels, proportions, rng) for split, labels in labels_by_split.items()}
        train = result.get("train", next(iter(result.values()), []))
        if all(len(part) > 0 for part in train):
            return result
        if scheme != "dirichlet":
            break
    raise PartitionError(
        f"{scheme} partition left a hospital without training data; use fewer hospitals"
        + (", a larger --alpha or another --seed" if scheme == "dirichlet" else "")
    )
