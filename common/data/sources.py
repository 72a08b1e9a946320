"""Where whole datasets come from before they are split into hospital folders.

Three kinds of source: ``digits`` (scikit-learn's handwritten digits, shipped inside scikit-learn, so
the demo runs offline on real images), a MedMNIST 2D dataset by name (read from ``--data-root`` when
the file is there, downloaded by the medmnist package otherwise), or a path to an .npz file in the
MedMNIST layout.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfed.common.data.folders import SPLITS, DatasetInfo
from medfed.common.errors import DataError
from medfed.common.limits import MEDMNIST_SIZES

DEFAULT_MEDMNIST_ROOT = Path.home() / ".medmnist"
Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SourceDataset:
    info: DatasetInfo
    splits: dict[str, Arrays]
    """split name -> (uint8 images (N, H, W[, C]), int64 labels (N,))"""


def _medmnist_info() -> dict[str, dict[str, object]]:
    import medmnist

    info: dict[str, dict[str, object]] = medmnist.INFO
    return info


def load_digits(seed: int = 0) -> SourceDataset:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes) split 70/10/20, stratified."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, rest = train_test_split(idx, test_size=0.3, stratify=labels, random_state=seed)
    val_idx, test_idx = train_test_split(rest, test_size=2 / 3, stratify=labels[rest], random_state=seed)
    info = DatasetInfo(
        dataset="digits",
        task="multi-class",
        channels=1,
        class_names=tuple(str(d) for d in range(10)),
        image_size=(8, 8),
    )
    splits = {name: (images[i], labels[i]) for name, i in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    return SourceDataset(info, splits)


def _class_names_for(flag: str | None, num_classes: int) -> tuple[str, ...]:
    if flag is not None:
        names = _medmnist_info()[flag]["label"]
        assert isinstance(names, dict)
        return tuple(str(names[str(i)]) for i in range(len(names)))
    return tuple(f"class_{i}" for i in range(num_classes))


def load_npz(path: Path, flag: str | None = None) -> SourceDataset:
    """An .npz in the MedMNIST layout; class names come from MedMNIST when the file is one of its datasets."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if flag is None:
        stem = path.stem.rsplit("_", 1)[0] if path.stem.rsplit("_", 1)[-1].isdigit() else path.stem
        flag = stem if stem in _medmnist_info() else None
    info_row = _medmnist_info()[flag] if flag else {}
    if str(info_row.get("task", "")).startswith("multi-label"):
        raise DataError(f"{path.name}: multi-label datasets are not supported (single-label classification only)")
    splits: dict[str, Arrays] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for split in SPLITS:
                if f"{split}_images" not in npz.files:
                    continue
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
                if labels.ndim == 2 and labels.shape[1] != 1:
                    raise DataError(
                        f"{path}: {split}_labels has {labels.shape[1]} columns: multi-label data is not supported"
                    )
                if images.dtype != np.uint8 or images.ndim not in (3, 4):
                    raise DataError(
                        f"{path}: {split}_images must be uint8 (N, H, W[, C]), found {images.dtype} {images.shape}"
                    )
                splits[split] = (images, labels.reshape(-1).astype(np.int64))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path} is not a readable .npz in the MedMNIST layout: {exc}") from None
    if "train" not in splits:
        raise DataError(f"{path} has no train_images/train_labels")
    images = splits["train"][0]
    all_labels = np.concatenate([labels for _, labels in splits.values()])
    if all_labels.min() < 0:
        raise DataError(f"{path}: labels must be non-negative, found {all_labels.min()}")
    num_classes = int(all_labels.max()) + 1
    class_names = _class_names_for(flag, num_classes)
    if num_classes > len(class_names):
        raise DataError(f"{path}: label {num_classes - 1} is out of range for {len(class_names)} classes")
    info = DatasetInfo(
        dataset=flag or path.stem,
        task=str(info_row.get("task", "multi-class")),
        channels=1 if images.ndim == 3 else int(images.shape[3]),
        class_names=class_names,
        image_size=(int(images.shape[1]), int(images.shape[2])),
    )
    return SourceDataset(info, splits)


def medmnist_file(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def load_medmnist(flag: str, size: int = 28, data_root: Path | None = None) -> SourceDataset:
    """A MedMNIST dataset: from data_root when given (never downloads then), else from ~/.medmnist,
    downloading it there with the medmnist package when it is missing."""
    if size not in MEDMNIST_SIZES:
        raise DataError(f"MedMNIST size must be one of {MEDMNIST_SIZES}, got {size}")
    file_name = medmnist_file(flag, size)
    root = data_root if data_root is not None else DEFAULT_MEDMNIST_ROOT
    path = root / file_name
    if not path.is_file():
        if data_root is not None:
            raise DataError(f"{file_name} not found in --data-root {data_root}")
        _download_medmnist(flag, size, root)
    return load_npz(path, flag)


def _download_medmnist(flag: str, size: int, root: Path) -> None:
    import medmnist

    info = _medmnist_info()[flag]
    suffix = "" if size == 28 else f"_{size}"
    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(medmnist, str(info["python_class"]))
    try:
        dataset_class(split="train", root=str(root), download=True, size=size)
    except Exception:  # medmnist surfaces network failures as many exception types, with multi-line text
        raise DataError(
            f"could not download {medmnist_file(flag, size)} from {info.get('url' + suffix)} into {root}; "
            f"on an offline machine, fetch it elsewhere (MD5 {info.get('MD5' + suffix)}) and pass --data-root DIR"
        ) from None


def load_source(
    source: str, *, data_root: Path | None = None, size: int = 28, seed: int = 0, image_size: int | None = None
) -> SourceDataset:
    """``image_size`` resizes an image folder's images (other sources have their own sizes)."""
    if source == "digits":
        return load_digits(seed)
    if Path(source).is_dir():
        from medfed.common.data.image_folder import load_image_folder

        return load_image_folder(Path(source), image_size=image_size)
    if source.endswith(".npz") or Path(source).exists():
        return load_npz(Path(source))
    flag = source.lower()
    if flag in _medmnist_info():
        if flag.endswith("3d"):
            raise DataError(f"{flag} is a 3D dataset; only MedMNIST 2D datasets are supported")
        return load_medmnist(flag, size, data_root)
    raise DataError(
        f"unknown source {source!r}: give 'digits', a MedMNIST 2D dataset name, an .npz file or an image folder"
    )
