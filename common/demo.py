"""fed-demo: a whole federation on this machine in one command.

It partitions a dataset into hospital folders, starts one fed-server and one fed-client per hospital
as separate processes talking gRPC over loopback (exactly what runs across real hosts), follows the
coordinator's history.jsonl and prints each round's global test accuracy. The default dataset is
scikit-learn's handwritten digits, which ships inside scikit-learn, so the demo runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medfed.common.certs_cli import init_ca, issue_client, issue_server
from medfed.common.cli import CliError, Parser, run_command, setup_logging
from medfed.common.config import build_config, field_default
from medfed.common.partition import SCHEMES
from medfed.common.partition_cli import TEST_FOLDER, format_counts, partition_to_folders
from medfed.common.processes import ProcessError, ProcessGroup
from medfed.common.sources import MEDMNIST_SIZES, load_source

EXAMPLES = """
examples:
  fed-demo                                   (digits, 3 hospitals, each missing one digit, 5 rounds)
  fed-demo --dataset pneumoniamnist --data-root ~/medmnist --scheme dirichlet --alpha 0.3 --rounds 3
"""

STARTUP_TIMEOUT_S = 120.0
FOLLOW_INTERVAL_S = 0.2


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    data_root: Path | None = None
    size: Literal[28, 64, 128, 224] = 28
    clients: int = Field(3, ge=1, le=26)
    scheme: Literal["iid", "dirichlet", "exclude-classes"] = "exclude-classes"
    alpha: float = Field(0.5, gt=0)
    rounds: int = Field(5, ge=1)
    local_epochs: int = Field(1, ge=0)
    model: Literal["cnn", "resnet18"] = "cnn"
    seed: int = Field(0, ge=0)
    out: Path | None = None
    verbose: bool = False


def build_parser() -> argparse.ArgumentParser:
    def d(name: str) -> object:
        return field_default(DemoConfig, name)

    p = Parser(
        prog="fed-demo",
        description="Run a complete federation on this machine: one coordinator and several hospitals, "
        "each a separate process talking gRPC over loopback.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--dataset", help=f"'digits' (offline), a MedMNIST 2D name or an .npz path (default {d('dataset')})")
    p.add_argument("--data-root", type=Path, help="folder holding MedMNIST .npz files")
    p.add_argument("--size", type=int, choices=MEDMNIST_SIZES, help="MedMNIST image size (default 28)")
    p.add_argument("--clients", type=int, help=f"number of hospitals (default {d('clients')})")
    p.add_argument("--scheme", choices=SCHEMES, help=f"how labels are spread (default {d('scheme')})")
    p.add_argument("--alpha", type=float, help=f"Dirichlet concentration (default {d('alpha')})")
    p.add_argument("--rounds", type=int, help=f"federated rounds (default {d('rounds')})")
    p.add_argument("--local-epochs", type=int, help=f"epochs per round at each hospital (default {d('local_epochs')})")
    p.add_argument("--model", choices=("cnn", "resnet18"), help=f"architecture (default {d('model')})")
    p.add_argument("--seed", type=int, help=f"random seed (default {d('seed')})")
    p.add_argument(
        "--out",
        type=Path,
        help="an empty or new folder for data, logs and results (default: a new temp folder)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _print_round(record: dict[str, Any], rounds: int) -> None:
    if "failed" in record:
        print(
            f"round {record['round']:>3}/{rounds}  FAILED: {record['failed']} (the previous model is kept)", flush=True
        )
        return
    print(
        f"round {record['round']:>3}/{rounds}  test accuracy {record.get('accuracy', float('nan')):.4f}  "
        f"loss {record.get('loss', float('nan')):.4f}  ({record['num_clients']} hospitals, "
        f"{record['num_examples']} images, {record['duration_s']:.1f} s)",
        flush=True,
    )


def _follow(procs: ProcessGroup, history: Path, rounds: int) -> dict[str, Any]:
    """Print rounds as the coordinator records them, until it exits; stop early if anything fails."""
    seen = 0
    last: dict[str, Any] = {}
    server = procs.procs["server"]
    while True:
        finished = server.poll() is not None
        lines = history.read_text().split("\n")[:-1] if history.exists() else []  # complete lines only
        for line in lines[seen:]:
            last = json.loads(line)
            _print_round(last, rounds)
        seen = len(lines)
        failure = procs.failed()
        if failure is not None:
            name, code = failure
            raise CliError(f"{name} exited with status {code}; its log ends:\n{procs.tail(name)}")
        if finished:
            return last
        time.sleep(FOLLOW_INTERVAL_S)


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


def _make_pki(folder: Path, hospitals: list[str]) -> None:
    """A throwaway federation PKI, made exactly as fed-certs makes one: the demo runs with mutual TLS."""
    init_ca(folder, "medfed demo CA")
    issue_server(folder, ["127.0.0.1", "localhost"])
    for name in hospitals:
        issue_client(folder, name)


def run_locally(
    out: Path,
    hospitals: Mapping[str, Path],
    test_dir: Path,
    run_dir: Path,
    server_args: Sequence[str],
    client_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One fed-server and one fed-client per hospital as processes over loopback with mutual TLS (a
    throwaway PKI in OUT/pki); prints each round as it is recorded and returns the last record."""
    logs, pki_dir, port_file = out / "logs", out / "pki", out / "server.port"
    threads = max(1, (os.cpu_count() or 1) // len(hospitals))
    _make_pki(pki_dir, list(hospitals))
    rounds = int(server_args[list(server_args).index("--rounds") + 1])
    tls_args = [
        "--tls-cert", str(pki_dir / "server.crt"), "--tls-key", str(pki_dir / "server.key"),
        "--tls-ca", str(pki_dir / "ca.crt"), "--tls-crl", str(pki_dir / "crl.pem"), "--allow", ",".join(hospitals),
        "--address", "127.0.0.1:0", "--port-file", str(port_file), "--min-clients", str(len(hospitals)),
        "--test-data", str(test_dir), "--out", str(run_dir), "--finish-grace", "30",
    ]  # fmt: skip
    procs = ProcessGroup(logs)
    codes: dict[str, int] = {}
    try:
        procs.start("server", "medfed.server", *tls_args, *server_args)
        port = procs.wait_for_port("server", port_file, STARTUP_TIMEOUT_S)
        print(
            f"coordinator listening on 127.0.0.1:{port} with mutual TLS (certificates in {pki_dir}); "
            f"starting {len(hospitals)} hospitals",
            flush=True,
        )
        for name, folder in hospitals.items():
            procs.start(
                name, "medfed.client", "--data", str(folder), "--server", f"127.0.0.1:{port}",
                "--tls-cert", str(pki_dir / f"{name}.crt"), "--tls-key", str(pki_dir / f"{name}.key"),
                "--tls-ca", str(pki_dir / "ca.crt"), "--no-progress", "--threads", str(threads), "--max-wait", "60",
                *client_args,
            )  # fmt: skip
        last = _follow(procs, run_dir / "history.jsonl", rounds)
        codes = procs.wait_all(timeout=60)
    except ProcessError as exc:
        raise CliError(str(exc)) from None
    finally:
        procs.stop_all()
    failed = next((name for name, code in codes.items() if code != 0), None)
    if failed is not None:
        raise CliError(f"{failed} exited with status {codes[failed]}; its log ends:\n{procs.tail(failed)}")
    return last


def exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the child processes


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
    if "per_class_accuracy" in last:
        _print_summary(last["per_class_accuracy"], {n: m.counts.get("train", []) for n, m in manifests.items()})
    print(f"done: model, history and report (report.md, plots) in {run_dir}, logs in {logs}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-demo", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
