"""fed-partition: split a dataset into hospital folders plus a held-out test folder for the coordinator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medfed.common.cli import Parser, run_command, setup_logging
from medfed.common.config import build_config, field_default
from medfed.common.data import MANIFEST, Manifest, save_folder
from medfed.common.errors import ConfigError
from medfed.common.partition import SCHEMES, hospital_names, partition
from medfed.common.sources import MEDMNIST_SIZES, SourceDataset, load_source

EXAMPLES = """
examples:
  fed-partition --source digits --out parts --clients 3 --scheme exclude-classes
  fed-partition --source pneumoniamnist --data-root ~/medmnist --out parts --clients 3 --scheme dirichlet --alpha 0.3
  fed-partition --source octmnist --size 64 --out parts --clients 3 --scheme exclude-classes   (downloads)
  fed-partition --source ./my_export.npz --out parts --clients 4 --scheme iid
"""

TEST_FOLDER = "test"


class PartitionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    out: Path
    clients: int = Field(3, ge=1, le=1000)
    scheme: Literal["iid", "dirichlet", "exclude-classes"] = "iid"
    alpha: float = Field(0.5, gt=0)
    seed: int = Field(0, ge=0)
    data_root: Path | None = None
    size: Literal[28, 64, 128, 224] = 28
    image_size: int | None = Field(None, ge=4, le=1024)
    force: bool = False
    verbose: bool = False


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


def build_parser() -> argparse.ArgumentParser:
    def d(name: str) -> object:
        return field_default(PartitionConfig, name)

    p = Parser(
        prog="fed-partition",
        description="Split a dataset into hospital folders (train + validation each) and a test folder "
        "for the coordinator, and print each hospital's label counts.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--source",
        help="'digits', a MedMNIST 2D name (pneumoniamnist, octmnist, ...), an .npz path, or an image folder "
        "(train/CLASS/*.png, val/..., test/..., or CLASS/*.png); required",
    )
    p.add_argument("--image-size", type=int, help="an image-folder --source: resize every image to NxN")
    p.add_argument("--out", type=Path, help="folder to write hospital_a, hospital_b, ... and test into; required")
    p.add_argument("--clients", type=int, help=f"number of hospitals (default {d('clients')})")
    p.add_argument("--scheme", choices=SCHEMES, help=f"how labels are spread (default {d('scheme')})")
    p.add_argument(
        "--alpha", type=float, help=f"Dirichlet concentration; smaller is more skewed (default {d('alpha')})"
    )
    p.add_argument("--seed", type=int, help=f"random seed (default {d('seed')})")
    p.add_argument("--data-root", type=Path, help="folder holding MedMNIST .npz files (no download then)")
    p.add_argument("--size", type=int, choices=MEDMNIST_SIZES, help="MedMNIST image size (default 28)")
    p.add_argument("--force", action="store_true", help="overwrite hospital folders already in --out")
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _run(argv: Sequence[str] | None) -> int:
    cfg = build_config(PartitionConfig, {}, vars(build_parser().parse_args(argv)))
    setup_logging(cfg.verbose)
    dataset = load_source(cfg.source, data_root=cfg.data_root, size=cfg.size, seed=cfg.seed, image_size=cfg.image_size)
    manifests = partition_to_folders(
        dataset,
        cfg.out,
        clients=cfg.clients,
        scheme=cfg.scheme,
        alpha=cfg.alpha,
        seed=cfg.seed,
        force=cfg.force,
        source=cfg.source,
    )
    info = dataset.info
    print(
        f"{info.dataset}: {info.num_classes} classes, {info.image_size[0]}x{info.image_size[1]}, "
        f"{info.channels} channel(s); scheme {cfg.scheme}; written to {cfg.out}"
    )
    print(format_counts(dataset, manifests))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-partition", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
