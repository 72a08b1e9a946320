"""fed-partition: split a dataset into hospital folders plus a held-out test folder for the coordinator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medfed.common.cli import command_parser, run_command, setup_logging
from medfed.common.config import build_config
from medfed.common.data.partition import format_counts, partition_to_folders
from medfed.common.data.sources import load_source
from medfed.common.limits import MEDMNIST_SIZES, SCHEMES, MedmnistSize, Scheme

EXAMPLES = """
examples:
  fed-partition --source digits --out parts --clients 3 --scheme exclude-classes
  fed-partition --source pneumoniamnist --data-root ~/medmnist --out parts --clients 3 --scheme dirichlet --alpha 0.3
  fed-partition --source octmnist --size 64 --out parts --clients 3 --scheme exclude-classes   (downloads)
  fed-partition --source ./my_export.npz --out parts --clients 4 --scheme iid
"""


class PartitionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    out: Path
    clients: int = Field(3, ge=1, le=1000)
    scheme: Scheme = "iid"
    alpha: float = Field(0.5, gt=0)
    seed: int = Field(0, ge=0)
    data_root: Path | None = None
    size: MedmnistSize = 28
    image_size: int | None = Field(None, ge=4, le=1024)
    force: bool = False
    verbose: bool = False


def build_parser() -> argparse.ArgumentParser:
    p, d = command_parser(
        "fed-partition",
        "Split a dataset into hospital folders (train + validation each) and a test folder "
        "for the coordinator, and print each hospital's label counts.",
        EXAMPLES,
        PartitionConfig,
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
