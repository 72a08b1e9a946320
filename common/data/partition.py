"""Splitting a dataset among hospitals: pure functions of (labels, scheme, seed), and the hospital
folders written from them (``partition_to_folders``, what fed-partition, fed-demo, fed-study, the
benchmarks and the tests use).

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
from pathlib import Path

import numpy as np

from medfed.common.data.folders import MANIFEST, Manifest, save_folder
from medfed.common.data.sources import SourceDataset
from medfed.common.errors import ConfigError, PartitionError
from medfed.common.limits import SCHEMES

TEST_FOLDER = "test"
"""the coordinator's held-out test folder beside the hospitals' folders"""


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


def partition_to_folders(
    dataset: SourceDataset,
    out: Path,
    *,
    clients: int,
    scheme: str,
    alpha: float = 0.5,
    seed: int = 0,
    force: bool = False,
    source: str | None = None,
) -> dict[str, Manifest]:
    """Write hospital_a, hospital_b, ... (train and val parts) and test/ (the whole test split)."""
    names = hospital_names(clients)
    has_test = "test" in dataset.splits
    folders = names + ([TEST_FOLDER] if has_test else [])
    existing = [name for name in folders if (out / name / MANIFEST).exists()]
    if existing and not force:
        raise ConfigError(f"--out: {out} already holds {', '.join(existing)}; choose another --out or pass --force")
    labels: dict[str, np.ndarray] = {s: dataset.splits[s][1] for s in ("train", "val") if s in dataset.splits}
    parts = partition(
        labels,
        num_clients=clients,
        num_classes=dataset.info.num_classes,
        scheme=scheme,
        alpha=alpha,
        seed=seed,
    )
    described = f"{scheme} (alpha {alpha})" if scheme == "dirichlet" else scheme
    manifests = {}
    for k, name in enumerate(names):
        splits = {
            split: (dataset.splits[split][0][idx[k]], dataset.splits[split][1][idx[k]]) for split, idx in parts.items()
        }
        manifests[name] = save_folder(out / name, name, dataset.info, splits, source=source, scheme=described)
    if has_test:
        manifests[TEST_FOLDER] = save_folder(
            out / TEST_FOLDER, TEST_FOLDER, dataset.info, {"test": dataset.splits["test"]}, source=source
        )
    return manifests


def format_counts(dataset: SourceDataset, manifests: dict[str, Manifest]) -> str:
    classes = list(dataset.info.class_names)
    width = max([len(n) for n in manifests] + [8])
    cols = [max(len(c), 6) for c in classes]
    lines = [
        f"{'folder':<{width}}  {'images':>7}  {'val':>6}  "
        + "  ".join(f"{c:>{w}}" for c, w in zip(classes, cols, strict=True))
    ]
    for name, manifest in manifests.items():
        main = "test" if name == TEST_FOLDER else "train"
        counts = manifest.counts.get(main, [0] * len(classes))
        val = "-" if name == TEST_FOLDER else str(sum(manifest.counts.get("val", [])))
        lines.append(
            f"{name:<{width}}  {sum(counts):>7}  {val:>6}  "
            + "  ".join(f"{n:>{w}}" for n, w in zip(counts, cols, strict=True))
        )
    return "\n".join(lines)
