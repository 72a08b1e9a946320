"""fed-demo: a whole federation on this machine in one command.

It partitions a dataset into hospital folders, starts one fed-server and one fed-client per hospital
as separate processes talking gRPC over loopback (exactly what runs across real hosts), follows the
coordinator's history.jsonl and prints each round's global test accuracy. The default dataset is
scikit-learn's handwritten digits, which ships inside scikit-learn, so the demo runs offline.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medfed.common.cli import CliError, command_parser, run_command, setup_logging
from medfed.common.config import build_config
from medfed.common.data.partition import TEST_FOLDER, format_counts, partition_to_folders
from medfed.common.data.sources import load_source
from medfed.common.limits import MEDMNIST_SIZES, MODEL_NAMES, SCHEMES, MedmnistSize, ModelName, Scheme
from medfed.tools.local_run import exit_on_sigterm, run_locally

EXAMPLES = """
examples:
  fed-demo                                   (digits, 3 hospitals, each missing one digit, 5 rounds)
  fed-demo --dataset pneumoniamnist --data-root ~/medmnist --scheme dirichlet --alpha 0.3 --rounds 3
"""


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    data_root: Path | None = None
    size: MedmnistSize = 28
    clients: int = Field(3, ge=1, le=26)
    scheme: Scheme = "exclude-classes"
    alpha: float = Field(0.5, gt=0)
    rounds: int = Field(5, ge=1)
    local_epochs: int = Field(1, ge=0)
    model: ModelName = "cnn"
    seed: int = Field(0, ge=0)
    out: Path | None = None
    verbose: bool = False


def build_parser() -> argparse.ArgumentParser:
    p, d = command_parser(
        "fed-demo",
        "Run a complete federation on this machine: one coordinator and several hospitals, "
        "each a separate process talking gRPC over loopback.",
        EXAMPLES,
        DemoConfig,
    )
    p.add_argument("--dataset", help=f"'digits' (offline), a MedMNIST 2D name or an .npz path (default {d('dataset')})")
    p.add_argument("--data-root", type=Path, help="folder holding MedMNIST .npz files")
    p.add_argument("--size", type=int, choices=MEDMNIST_SIZES, help="MedMNIST image size (default 28)")
    p.add_argument("--clients", type=int, help=f"number of hospitals (default {d('clients')})")
    p.add_argument("--scheme", choices=SCHEMES, help=f"how labels are spread (default {d('scheme')})")
    p.add_argument("--alpha", type=float, help=f"Dirichlet concentration (default {d('alpha')})")
    p.add_argument("--rounds", type=int, help=f"federated rounds (default {d('rounds')})")
    p.add_argument("--local-epochs", type=int, help=f"epochs per round at each hospital (default {d('local_epochs')})")
    p.add_argument("--model", choices=MODEL_NAMES, help=f"architecture (default {d('model')})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d('seed')})")
    p.add_argument(
        "--out",
        type=Path,
        help="an empty or new folder for data, logs and results (default: a new temp folder)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _print_summary(per_class: dict[str, float | None], train_counts: dict[str, list[int]]) -> None:
    """The point of the demo: classes a hospital never saw are recognised by the federated model."""
    shown = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in per_class.items())
    print(f"final per-class test accuracy: {shown}")
    classes = list(per_class)
    for hospital, counts in train_counts.items():
        unseen = [classes[c] for c, n in enumerate(counts) if n == 0]
        for name in unseen if hospital != TEST_FOLDER else []:
            print(
                f"  {hospital} never saw class {name}; the federated model recognises "
                f"{(per_class[name] or 0.0):.0%} of its test images"
            )


def _run(argv: Sequence[str] | None) -> int:
    cfg = build_config(DemoConfig, {}, vars(build_parser().parse_args(argv)))
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    setup_logging(cfg.verbose)
    out = cfg.out or Path(tempfile.mkdtemp(prefix="fed-demo-"))
    if out.exists() and any(out.iterdir()):
        raise CliError(f"--out: {out} is not empty; give a new or empty folder", 2)
    data_dir, run_dir, logs = out / "data", out / "run", out / "logs"

    dataset = load_source(cfg.dataset, data_root=cfg.data_root, size=cfg.size, seed=cfg.seed)
    manifests = partition_to_folders(
        dataset,
        data_dir,
        clients=cfg.clients,
        scheme=cfg.scheme,
        alpha=cfg.alpha,
        seed=cfg.seed,
        source=cfg.dataset,
    )
    print(f"{dataset.info.dataset}: {cfg.clients} hospitals, scheme {cfg.scheme}; label counts:")
    print(format_counts(dataset, manifests), flush=True)
    if TEST_FOLDER not in manifests:
        raise CliError(f"{cfg.dataset} has no test split for the coordinator to evaluate on", 2)

    hospitals = {name: data_dir / name for name in manifests if name != TEST_FOLDER}
    server_args = [
        "--rounds", str(cfg.rounds), "--model", cfg.model, "--local-epochs", str(cfg.local_epochs),
        "--seed", str(cfg.seed),
    ]  # fmt: skip
    last = run_locally(out, hospitals, data_dir / TEST_FOLDER, run_dir, server_args)
    if last is not None and last.test is not None:
        _print_summary(last.test.per_class_accuracy, {n: m.counts.get("train", []) for n, m in manifests.items()})
    print(f"done: model, history and report (report.md, plots) in {run_dir}, logs in {logs}")
    print(f"the run's signed audit chain: fed-audit verify {run_dir} --ca {out / 'pki' / 'ca.crt'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-demo", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
