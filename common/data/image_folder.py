"""Hospital image folders: one subfolder per class of PNG/JPEG files, the way hospitals export them.

Accepted layouts (class names are the subfolder names, kept as they are)::

    DIR/train/NORMAL/*.png   DIR/train/PNEUMONIA/*.jpeg   [DIR/val/...]   [DIR/test/...]
    DIR/NORMAL/*.png         DIR/PNEUMONIA/*.png          (no split folders: everything is one split)

Every image is decoded once, in parallel threads (PIL releases the GIL while decoding), into one
uint8 array; training then works on tensors only. Images that are grey in every file, including RGB
files whose three channels are equal (common for X-ray exports), become one channel.

A hospital that has no images of a class keeps the federation's class list by leaving that class's
folder empty, or by naming the list with ``classes`` (``--classes``). Folders named otherwise than the
federation's classes (``NORMAL`` where the federation says ``normal``) are renamed with ``class_map``
(``--class-map NORMAL=normal,PNEUMONIA=pneumonia``); several folders may map onto one class.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfed.common.data.folders import DatasetInfo, HospitalData, check_split, load_folder
from medfed.common.data.sources import Arrays, SourceDataset
from medfed.common.errors import DataError

log = logging.getLogger("medfed.data")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
GREY_TOLERANCE = 3
"""an RGB pixel whose channels differ by at most this much is grey (JPEG rounding)"""
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def looks_like_image_folder(path: Path) -> bool:
    """A folder with subfolders and no manifest.json (which marks a folder made by fed-partition)."""
    return path.is_dir() and not (path / "manifest.json").exists() and any(p.is_dir() for p in path.iterdir())


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode(path: Path, size: int | None) -> np.ndarray:
    """(H, W) for grey images, (H, W, 3) otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image: Image.Image = opened
            if size is not None and opened.size != (size, size):
                image = opened.resize((size, size), Image.Resampling.BILINEAR)
            if image.mode in GREY_MODES:
                array = np.asarray(image)
                if array.ndim == 3:  # LA: drop alpha
                    array = array[..., 0]
                if array.dtype != np.uint8:  # 16-bit or float grey: scale the file's range to 0..255
                    lo, hi = float(array.min()), float(array.max())
                    array = np.zeros(array.shape, np.uint8) if hi <= lo else (array - lo) * (255.0 / (hi - lo))
                return np.asarray(array, dtype=np.uint8)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as an image: {str(exc).splitlines()[0]}") from None


def _files(class_dir: Path) -> list[Path]:
    files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if skipped := len(files) - len(images):
        log.warning(
            "%s: skipped %d file(s) that are not %s images",
            class_dir,
            skipped,
            "/".join(sorted(s[1:] for s in IMAGE_SUFFIXES)),
        )
    return images


def _layout(path: Path) -> dict[str, dict[str, list[Path]]]:
    """split -> class name -> image files."""
    if not path.is_dir():
        raise DataError(f"{path} does not exist or is not a folder")
    subdirs = _visible_dirs(path)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_FOLDERS]
    roots = {SPLIT_FOLDERS[d.name.lower()]: d for d in split_dirs} if split_dirs else {"": path}
    layout: dict[str, dict[str, list[Path]]] = {}
    for split, root in roots.items():
        class_dirs = _visible_dirs(root)
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose and not class_dirs:
            raise DataError(
                f"{root} holds images but no class subfolders: put each class's images in a folder "
                f"named for the class, e.g. {root / 'NORMAL'}"
            )
        layout[split] = {d.name: _files(d) for d in class_dirs}
    if not any(files for classes in layout.values() for files in classes.values()):
        raise DataError(
            f"no images in {path}: expected one subfolder per class of {'/'.join(sorted(IMAGE_SUFFIXES))} files, "
            f"e.g. {path / 'train' / 'NORMAL'} or {path / 'NORMAL'}"
        )
    return layout


def _mapped(path: Path, layout: dict[str, dict[str, list[Path]]], class_map: Mapping[str, str]) -> None:
    """Rename class folders in place (split -> class -> files); folders mapped onto one class are merged."""
    found = {name for split in layout.values() for name in split}
    if unknown := sorted(set(class_map) - found):
        raise DataError(
            f"--class-map names folder(s) {', '.join(unknown)}, which {path} does not have "
            f"(its class folders: {', '.join(sorted(found))})"
        )
    for split, by_class in layout.items():
        renamed: dict[str, list[Path]] = {}
        for name, files in by_class.items():
            renamed.setdefault(class_map.get(name, name), []).extend(files)
        layout[split] = renamed


def _class_names(path: Path, layout: dict[str, dict[str, list[Path]]], classes: Sequence[str] | None) -> list[str]:
    found = sorted({name for split in layout.values() for name in split})
    if classes is None:
        if len(found) < 2:
            raise DataError(
                f"{path} has only the class folder(s) {found}: a classifier needs at least two classes "
                "(leave an empty folder for a class this hospital has no images of, or pass --classes)"
            )
        return found
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise DataError(f"{path}: class folder(s) {unknown} are not in --classes {', '.join(classes)}")
    return list(classes)


def load_image_folder(
    path: Path,
    *,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    default_split: str = "train",
    threads: int | None = None,
    class_map: Mapping[str, str] | None = None,
) -> SourceDataset:
    """Decode every image under ``path`` once; ``default_split`` names the split of a folder without split folders."""
    layout = _layout(path)
    if class_map:
        _mapped(path, layout, class_map)
    names = _class_names(path, layout, classes)
    jobs = [
        (split or default_split, names.index(name), file)
        for split, by_class in layout.items()
        for name, files in by_class.items()
        for file in files
    ]
    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda job: _decode(job[2], image_size), jobs))
    sizes = Counter(a.shape[:2] for a in arrays)
    if len(sizes) > 1:
        (common, _), (other, _) = sizes.most_common(2)
        example = next(job[2] for job, a in zip(jobs, arrays, strict=True) if a.shape[:2] == other)
        raise DataError(
            f"images in {path} differ in size: {len(arrays) - sizes[other]} are {common[0]}x{common[1]}, but e.g. "
            f"{example} is {other[0]}x{other[1]}; export them at one size or pass --image-size N to resize all to NxN"
        )
    colour = any(a.ndim == 3 and int(np.ptp(a.astype(np.int16), axis=2).max()) > GREY_TOLERANCE for a in arrays)
    images = [
        (np.stack([a] * 3, -1) if a.ndim == 2 else a) if colour else (a[..., 1] if a.ndim == 3 else a) for a in arrays
    ]
    splits: dict[str, Arrays] = {}
    for split in dict.fromkeys(job[0] for job in jobs):
        idx = [i for i, job in enumerate(jobs) if job[0] == split]
        splits[split] = (np.stack([images[i] for i in idx]), np.array([jobs[i][1] for i in idx], dtype=np.int64))
    h, w = arrays[0].shape[:2]
    info = DatasetInfo(
        dataset=path.resolve().name, channels=3 if colour else 1, class_names=tuple(names), image_size=(h, w)
    )
    return SourceDataset(info, splits)


def carve_validation(dataset: SourceDataset, fraction: float = 0.1, seed: int = 0) -> SourceDataset:
    """Hold out ``fraction`` of each class's training images as a validation split, when there is none."""
    if "val" in dataset.splits or "train" not in dataset.splits:
        return dataset
    images, labels = dataset.splits["train"]
    rng = np.random.default_rng(seed)
    held = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[: int(fraction * int((labels == c).sum()))]
            for c in range(dataset.info.num_classes)
        ]
    ).astype(np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    held.sort()
    splits = dict(dataset.splits)
    splits["train"], splits["val"] = (images[keep], labels[keep]), (images[held], labels[held])
    return SourceDataset(dataset.info, splits)


def _renamed(data: HospitalData, class_map: Mapping[str, str]) -> HospitalData:
    """A fed-partition folder's class names renamed (its labels are numbers: names map one to one)."""
    names = data.info.class_names
    if unknown := sorted(set(class_map) - set(names)):
        raise DataError(f"--class-map names class(es) {', '.join(unknown)}, which {data.path} does not have "
                        f"(its classes: {', '.join(names)})")  # fmt: skip
    renamed = tuple(class_map.get(n, n) for n in names)
    if len(set(renamed)) != len(renamed):
        raise DataError(f"--class-map would give {data.path} two classes of one name; a fed-partition folder's "
                        "classes can only be renamed, not merged")  # fmt: skip
    return replace(data, info=data.info.model_copy(update={"class_names": renamed}))


def load_hospital(
    path: Path,
    *,
    require: tuple[str, ...] = ("train",),
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    class_map: Mapping[str, str] | None = None,
) -> HospitalData:
    """A hospital's data from a fed-partition folder or straight from an image folder.

    An image folder without a val folder gives a tenth of each class's training images to validation;
    one without split folders is a test set when only ``test`` is required, a training set otherwise."""
    if not looks_like_image_folder(path):
        if classes is not None or image_size is not None:
            raise DataError(f"--classes and --image-size apply to image folders; {path} is a fed-partition folder")
        data = load_folder(path, require=require)
        return _renamed(data, class_map) if class_map else data
    default = "test" if require == ("test",) else "train"
    dataset = load_image_folder(
        path, classes=classes, image_size=image_size, default_split=default, class_map=class_map
    )
    if default == "train" and "val" not in dataset.splits:
        dataset = carve_validation(dataset)
        log.info(
            "%s has no val folder: %d training images held out for validation", path, len(dataset.splits["val"][1])
        )
    splits = {name: check_split(str(path), name, *arrays, dataset.info) for name, arrays in dataset.splits.items()}
    for split in require:
        if split not in splits or len(splits[split]) == 0:
            raise DataError(f"{path} has no {split} images (expected {path / split}/CLASS/ folders)")
    return HospitalData(path=path, name=dataset.info.dataset, info=dataset.info, splits=splits)
