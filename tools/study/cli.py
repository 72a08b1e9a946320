"""fed-study: local-only vs federated vs centralized on one dataset, in one command.

It partitions a dataset into hospital folders (or takes existing ones with --hospitals and --test),
runs the federation for real (fed-server and one fed-client per hospital as processes over loopback
with mutual TLS, exactly as fed-demo does), once per --strategies entry (same data, seed and rounds;
with --attackers K the last K hospitals simulate --attack in every one), then trains the two
baselines in this process with the same model and the same total epochs, and writes the comparison:
study.json, study.csv, comparison.png and report.md, beside each federated run's own report in
OUT/federated (one strategy) or OUT/federated-STRATEGY.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medfed.client.attack import parse_attack
from medfed.common.cli import CliError, command_parser, run_command, setup_logging
from medfed.common.config import build_config
from medfed.common.data.image_folder import load_hospital
from medfed.common.data.partition import TEST_FOLDER, format_counts, partition_to_folders
from medfed.common.data.sources import load_source
from medfed.common.errors import DataError, UserError
from medfed.common.limits import (
    LR_SCHEDULES,
    MEDMNIST_SIZES,
    MODEL_NAMES,
    SCHEMES,
    STRATEGIES,
    LrSchedule,
    MedmnistSize,
    ModelName,
    Scheme,
    StrategyName,
)
from medfed.tools.local_run import exit_on_sigterm, run_locally

EXAMPLES = """
examples:
  fed-study                                         (offline: digits, 3 hospitals each missing a class)
  fed-study --dataset pneumoniamnist --data-root ~/medmnist --scheme dirichlet --alpha 0.3 \\
            --model resnet18 --rounds 20 --out study-pneumonia
  fed-study --hospitals /data/hospital_a /data/hospital_b --test /data/test --out study-ours
  fed-study --strategies fedavg,median,krum --attackers 1 --attack scale:100   (a poisoning hospital)
  fed-study --strategies fedavg,fedprox,fedadam,scaffold,fedbn --scheme dirichlet --alpha 0.1 --clients 5
"""


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path | None = None
    """None: a new folder in the current directory, named for the dataset and the time"""
    dataset: str = "digits"
    data_root: Path | None = None
    size: MedmnistSize = 28
    image_size: int | None = Field(None, ge=4, le=1024)
    hospitals: list[Path] | None = None
    test: Path | None = None
    clients: int = Field(3, ge=1, le=26)
    scheme: Scheme = "exclude-classes"
    alpha: float = Field(0.5, gt=0)
    rounds: int = Field(5, ge=1)
    local_epochs: int = Field(1, ge=1)
    model: ModelName = "cnn"
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    sgd_lr: float = Field(0.05, gt=0, le=10, allow_inf_nan=False)
    batch_size: int = Field(64, ge=2)
    seed: int = Field(0, ge=0)
    pretrained: Path | None = None
    augment: bool = False
    lr_schedule: LrSchedule = "constant"
    strategies: list[StrategyName] = ["fedavg"]
    attackers: int = Field(0, ge=0)
    attack: str = "sign-flip"
    device: str = "auto"
    progress: bool | None = None
    """None: progress bars only when standard error is a terminal"""
    verbose: bool = False

    @field_validator("strategies", mode="before")
    @classmethod
    def _split_strategies(cls, value: object) -> object:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value

    @field_validator("strategies")
    @classmethod
    def _distinct(cls, value: list[StrategyName]) -> list[StrategyName]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give one or more distinct strategies, comma-separated")
        if "norm-bound" in value:
            raise ValueError("norm-bound needs its bound: run fed-server --strategy norm-bound --norm-bound B")
        return value

    @field_validator("attack")
    @classmethod
    def _known_attack(cls, value: str) -> str:
        try:
            parse_attack(value)
        except UserError as exc:
            raise ValueError(str(exc).split(": ", 1)[1]) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        hospitals = len(self.hospitals) if self.hospitals is not None else self.clients
        if self.attackers >= hospitals:
            raise ValueError(f"--attackers {self.attackers} leaves no honest hospital among {hospitals}")
        if (self.hospitals is None) != (self.test is None):
            raise ValueError("--hospitals and --test go together (or give neither and a --dataset to partition)")
        if self.hospitals is not None and len({p.resolve().name for p in self.hospitals}) != len(self.hospitals):
            raise ValueError("--hospitals: every hospital folder needs a different name (it names the hospital)")
        return self


def build_parser() -> argparse.ArgumentParser:
    p, d = command_parser(
        "fed-study",
        "Compare each hospital alone, the federation and all data pooled: same model, same total "
        "epochs, same test set. Writes a table, plots and report.md.",
        EXAMPLES,
        StudyConfig,
    )
    p.add_argument(
        "--out",
        type=Path,
        help="a new or empty folder for everything the study writes (default: a new fed-study-DATASET-TIME folder "
        "here)",
    )
    p.add_argument(
        "--dataset", help=f"'digits', a MedMNIST 2D name, an .npz or an image folder (default {d('dataset')})"
    )
    p.add_argument("--data-root", type=Path, help="folder holding MedMNIST .npz files (no download then)")
    p.add_argument("--size", type=int, choices=MEDMNIST_SIZES, help="MedMNIST image size (default 28)")
    p.add_argument("--image-size", type=int, help="image folders: resize every image to NxN")
    p.add_argument("--hospitals", type=Path, nargs="+", help="existing hospital folders, instead of partitioning")
    p.add_argument("--test", type=Path, help="with --hospitals: the held-out test folder")
    p.add_argument("--clients", type=int, help=f"number of hospitals to partition into (default {d('clients')})")
    p.add_argument("--scheme", choices=SCHEMES, help=f"how labels are spread (default {d('scheme')})")
    p.add_argument("--alpha", type=float, help=f"Dirichlet concentration (default {d('alpha')})")
    p.add_argument("--rounds", type=int, help=f"federated rounds (default {d('rounds')})")
    p.add_argument("--local-epochs", type=int, help=f"epochs per round at each hospital (default {d('local_epochs')})")
    p.add_argument("--model", choices=MODEL_NAMES, help=f"architecture (default {d('model')})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d('lr')})")
    p.add_argument("--sgd-lr", type=float,
                   help=f"learning rate of the arms whose hospitals train with plain SGD: scaffold (default "
                        f"{d('sgd_lr')})")  # fmt: skip
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d('batch_size')})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d('seed')})")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="constant, or cosine decay (default constant)")
    p.add_argument("--augment", action="store_true", help="random shifts and rotations of training batches")
    p.add_argument("--pretrained", type=Path, help="starting weights for every model (a local file)")
    p.add_argument(
        "--strategies",
        help=f"federated arms, comma-separated, one run each (default fedavg; choose from {', '.join(STRATEGIES)}; "
        "norm-bound needs fed-server's --norm-bound)",
    )
    p.add_argument("--attackers", type=int, help="the last K hospitals simulate --attack in every arm (default 0)")
    p.add_argument(
        "--attack", help="with --attackers: label-flip, sign-flip, scale:K or gaussian:SIGMA (default sign-flip)"
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _default_out(cfg: StudyConfig) -> Path:
    name = "own" if cfg.hospitals is not None else Path(cfg.dataset).stem
    return Path(f"fed-study-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def _prepare_data(cfg: StudyConfig, out: Path) -> tuple[dict[str, Path], Path]:
    """Hospital folders by name, and the test folder."""
    if cfg.hospitals is not None and cfg.test is not None:
        return {p.resolve().name: p for p in cfg.hospitals}, cfg.test
    data_dir = out / "data"
    dataset = load_source(cfg.dataset, data_root=cfg.data_root, size=cfg.size, seed=cfg.seed, image_size=cfg.image_size)
    manifests = partition_to_folders(dataset, data_dir, clients=cfg.clients, scheme=cfg.scheme, alpha=cfg.alpha,
                                     seed=cfg.seed, source=cfg.dataset)  # fmt: skip
    print(f"{dataset.info.dataset}: {cfg.clients} hospitals, scheme {cfg.scheme}; label counts:")
    print(format_counts(dataset, manifests), flush=True)
    if TEST_FOLDER not in manifests:
        raise DataError(f"{cfg.dataset} has no test split to compare the models on")
    return {name: data_dir / name for name in manifests if name != TEST_FOLDER}, data_dir / TEST_FOLDER


def _run(argv: Sequence[str] | None) -> int:
    cfg = build_config(StudyConfig, {}, vars(build_parser().parse_args(argv)))
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    setup_logging(cfg.verbose)
    # PyTorch (seconds to import) and matplotlib only once the flags are known to be good: --help stays fast.
    from medfed.common.ml.training import pick_device
    from medfed.tools.study.baselines import Outcome, pooled, train_and_test
    from medfed.tools.study.report import write_study

    out = cfg.out or _default_out(cfg)
    if out.exists() and any(out.iterdir()):
        raise CliError(f"--out: {out} is not empty; give a new or empty folder", 2)
    print(f"the study writes to {out}", flush=True)
    progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    device = pick_device(cfg.device)
    folders, test_folder = _prepare_data(cfg, out)
    # Load (and so validate) everything before the long work starts.
    hospitals = {name: load_hospital(path) for name, path in folders.items()}
    test = load_hospital(test_folder, require=("test",))
    for name, data in hospitals.items():
        if reason := test.info.mismatch(data.info):
            raise DataError(f"{folders[name]}: its {reason}")
    epochs = cfg.rounds * cfg.local_epochs
    common = ["--model", cfg.model, "--seed", str(cfg.seed), "--lr", str(cfg.lr), "--batch-size", str(cfg.batch_size)]
    server_args = [
        "--rounds",
        str(cfg.rounds),
        "--local-epochs",
        str(cfg.local_epochs),
        *common,
        "--device",
        cfg.device,
    ]
    if cfg.augment:
        server_args.append("--augment")
    server_args += ["--lr-schedule", cfg.lr_schedule]
    if cfg.pretrained is not None:
        server_args += ["--pretrained", str(cfg.pretrained)]
    attackers = list(folders)[len(folders) - cfg.attackers :] if cfg.attackers else []
    hospital_args = {name: ["--simulate-attack", cfg.attack] for name in attackers}
    federated = []
    for strategy in cfg.strategies:
        single = len(cfg.strategies) == 1
        work, name = (out, "federated") if single else (out / "arms" / strategy, f"federated {strategy}")
        run_dir = out / ("federated" if single else f"federated-{strategy}")
        print(f"{name}: {cfg.rounds} rounds x {cfg.local_epochs} local epoch(s) of {cfg.model}"
              + (f", SGD at lr {cfg.sgd_lr:g}" if strategy == "scaffold" else "")
              + (f"; {', '.join(attackers)} simulating {cfg.attack}" if attackers else ""), flush=True)  # fmt: skip
        arm = [*server_args, "--strategy", strategy]
        if strategy == "scaffold":  # its hospitals train with SGD, which needs its own learning rate
            arm += ["--lr", str(cfg.sgd_lr)]
        last = run_locally(work, folders, test_folder, run_dir, arm, ["--device", cfg.device], hospital_args)
        if last is None or last.test is None:
            reason = "recorded no round" if last is None else f"did not adopt its last round's model ({last.failed})"
            raise CliError(f"the {name} run {reason}; see {work / 'logs'}")
        tested = last.test
        federated.append(Outcome(name, tested.accuracy, tested.auc, tested.per_class_accuracy, last.num_examples))
    baseline = partial(
        train_and_test, model=cfg.model, epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
        device=device, pretrained=cfg.pretrained, progress=progress, augment=cfg.augment,
        lr_schedule=cfg.lr_schedule,
    )  # fmt: skip
    test_split = test.split("test")
    local = [baseline(f"local {name}", d.split("train"), test_split, test.info) for name, d in hospitals.items()]
    central = baseline("centralized", pooled([d.split("train") for d in hospitals.values()]), test_split, test.info)
    train_classes = {name: sorted(set(d.split("train").labels.tolist())) for name, d in hospitals.items()}
    settings = {**cfg.model_dump(mode="json"), "epochs": epochs, "attacker_names": attackers}
    files = write_study(out, [*local, *federated, central], test.info, train_classes, settings=settings)
    print(f"done: {', '.join(str(f) for f in files)}; each federated run's own report is in its folder")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-study", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
