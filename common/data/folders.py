"""The hospital folder format: MedMNIST's .npz layout plus a small JSON manifest.

A folder holds ``data.npz`` (``train_images``, ``train_labels``, ``val_images``, ``val_labels`` and
optionally ``test_images``, ``test_labels``: images uint8 of shape (N, H, W) or (N, H, W, C), labels
integers of shape (N,) or (N, 1)) and ``manifest.json`` (dataset, task, channels, class names, image
size, counts). Everything is validated on load so that a bad folder fails at start-up with a message
naming the file and the problem, not in the middle of a round. Arrays load with allow_pickle=False.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medfed.common import files
from medfed.common.errors import DataError
from medfed.common.peer_text import listed

FORMAT = "medfed-hospital/1"
MANIFEST = "manifest.json"
DATA_FILE = "data.npz"
SPLITS = ("train", "val", "test")


def _show(value: object) -> object:
    """Names from a peer are quoted and capped (a hospital may send 1,000 class names); sizes are lists."""
    if isinstance(value, tuple):
        return listed(value) if any(isinstance(v, str) for v in value) else list(value)
    return value


def suggested_class_map(federation: tuple[str, ...], hospital: tuple[str, ...]) -> str | None:
    """``--class-map`` pairs that rename a hospital's class names onto the federation's, when each of the
    hospital's unknown names matches exactly one federation class case-insensitively (NORMAL -> normal)."""
    unknown = [c for c in hospital if c not in federation]
    pairs = []
    for name in unknown:
        matches = [f for f in federation if f.casefold() == name.casefold() and f not in hospital]
        if len(matches) != 1:
            return None
        pairs.append(f"{name}={matches[0]}")
    return ",".join(pairs) or None


def _class_hint(federation: tuple[str, ...], hospital: tuple[str, ...]) -> str:
    extra = [c for c in hospital if c not in federation]
    missing = [c for c in federation if c not in hospital]
    if extra:
        mapping = suggested_class_map(federation, hospital)
        how = f"--class-map {mapping}" if mapping else "--class-map FOLDER=CLASS,..."
        return (
            f": the federation has no class {listed(extra)}; if these are the federation's classes under other "
            f"names, map the hospital's folders onto them with fed-client {how}"
        )
    if missing:
        return (
            f": it lacks {listed(missing)} (an image folder keeps a class it has no images of with an empty "
            "folder or --classes)"
        )
    return ": the same classes in another order (--classes sets the order)"


class DatasetInfo(BaseModel):
    """What the data looks like; hospitals of one federation must agree on everything but the name."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    task: str = "multi-class"
    channels: int = Field(ge=1, le=16)
    class_names: tuple[str, ...] = Field(min_length=2)
    image_size: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def mismatch(self, other: DatasetInfo) -> str | None:
        """Why a model trained on ``other`` could not be averaged with one trained on this, if it can't."""
        for field in ("channels", "class_names", "image_size"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                return f"{field} {_show(theirs)} differ from the federation's {_show(mine)}" + (
                    _class_hint(mine, theirs) if field == "class_names" else ""
                )
        return None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: str = FORMAT
    name: str
    data: DatasetInfo
    counts: dict[str, list[int]] = Field(default_factory=dict)
    source: str | None = None
    scheme: str | None = None


@dataclass(frozen=True)
class Split:
    """Images decoded once into uint8 (N, C, H, W) and int64 labels (N,), as numpy arrays (training wraps
    them with torch.from_numpy, no copy) so that reading data never needs PyTorch."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def empty(info: DatasetInfo) -> Split:
        h, w = info.image_size
        return Split(np.empty((0, info.channels, h, w), dtype=np.uint8), np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class HospitalData:
    path: Path
    name: str
    info: DatasetInfo
    splits: Mapping[str, Split]

    def split(self, name: str) -> Split:
        return self.splits.get(name) or Split.empty(self.info)


def label_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return [int(c) for c in np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_classes)]


def save_folder(
    path: Path,
    name: str,
    info: DatasetInfo,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    source: str | None = None,
    scheme: str | None = None,
) -> Manifest:
    """Write a hospital folder; files are written under temporary names and renamed into place."""
    path.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for split, (images, labels) in splits.items():
        arrays[f"{split}_images"] = np.ascontiguousarray(images, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64).reshape(-1, 1)
    counts = {split: label_counts(labels, info.num_classes) for split, (_, labels) in splits.items()}
    manifest = Manifest(name=name, data=info, counts=counts, source=source, scheme=scheme)
    with files.replacing(path / DATA_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    files.write_text(path / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(path: Path) -> Manifest:
    if not path.exists():
        raise DataError(f"data folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder (expected a hospital folder made by fed-partition)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} is missing: is {path} a hospital folder made by fed-partition?")
    try:
        return Manifest.model_validate(json.loads(manifest_path.read_text()))
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest_path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise DataError(f"{manifest_path}: {where}: {err['msg']}") from None


def check_split(where: str, split: str, images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> Split:
    if images.dtype != np.uint8:
        raise DataError(f"{where}: {split}_images must be uint8, found {images.dtype}")
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.ndim != 4:
        raise DataError(f"{where}: {split}_images must have shape (N, H, W) or (N, H, W, C), found {images.shape}")
    n, h, w, c = images.shape
    if (h, w) != tuple(info.image_size) or c != info.channels:
        raise DataError(
            f"{where}: {split}_images are {h}x{w} with {c} channel(s), the manifest says "
            f"{info.image_size[0]}x{info.image_size[1]} with {info.channels}"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{where}: {split}_labels must have shape ({n},) or ({n}, 1), found {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: {split}_labels must be integers, found {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= info.num_classes):
        bad = labels[(labels < 0) | (labels >= info.num_classes)][0]
        raise DataError(
            f"{where}: {split}_labels has value {bad} outside 0..{info.num_classes - 1} "
            f"({info.num_classes} classes in the manifest)"
        )
    return Split(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64))


def load_folder(path: Path, *, require: tuple[str, ...] = ("train",)) -> HospitalData:
    """Load and validate a hospital folder; ``require`` names the splits that must hold images."""
    manifest = read_manifest(path)
    npz_path = path / DATA_FILE
    if not npz_path.is_file():
        raise DataError(f"{npz_path} is missing")
    splits: dict[str, Split] = {}
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            keys = set(npz.files)
            for split in SPLITS:
                has_images, has_labels = f"{split}_images" in keys, f"{split}_labels" in keys
                if has_images != has_labels:
                    raise DataError(f"{npz_path}: {split}_images and {split}_labels must come together")
                if has_images:
                    images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
                    splits[split] = check_split(str(npz_path), split, images, labels, manifest.data)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{npz_path} is not a readable .npz file: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{npz_path}: {exc}") from None
    for split in require:
        if split not in splits or len(splits[split]) == 0:
            raise DataError(f"{npz_path} has no {split} images")
    return HospitalData(path=path, name=manifest.name, info=manifest.data, splits=splits)
