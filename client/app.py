"""fed-client: a hospital node's command line."""

from __future__ import annotations

import os

# Before gRPC loads: its C core would print TLS handshake details that this command reports itself.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import grpc

from medfed.client.config import ClientConfig
from medfed.client.policy import load_policy
from medfed.common.cli import EXIT_USAGE, CliError, command_parser, run_command, setup_logging
from medfed.common.config import build_config, load_toml, parse_address
from medfed.common.data.image_folder import load_hospital
from medfed.common.dp.accounting import default_delta
from medfed.common.limits import MAX_TEXT
from medfed.common.pki import check_pair, common_name
from medfed.common.wire.options import channel_options
from medfed.common.wire.proto import pb_grpc
from medfed.common.wire.tls import channel_credentials

log = logging.getLogger("medfed.client")

EXAMPLES = """
examples:
  fed-client --data /hospital_a --server coordinator.example.org:8443 \
             --tls-cert hospital_a.crt --tls-key hospital_a.key --tls-ca ca.crt
  fed-client --data /hospital_a --server 10.0.0.5:8443 --server-name coordinator.example.org \
             --tls-cert hospital_a.crt --tls-key hospital_a.key --tls-ca ca.crt
  fed-client --data ./parts/hospital_b --server 127.0.0.1:8443 --insecure --threads 2 --no-progress
"""


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    p, d = command_parser(
        "fed-client",
        "Join a federation as a hospital: train on local images, send only model updates.",
        EXAMPLES,
        ClientConfig,
    )
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below (flags win)")
    p.add_argument(
        "--data",
        type=Path,
        help="this hospital's folder: made by fed-partition, or an image folder (train/CLASS/*.png ...); required",
    )
    p.add_argument(
        "--classes", help="image folders: the federation's class names in label order (default: the subfolder names)"
    )
    p.add_argument(
        "--class-map",
        help="rename class folders onto the federation's class names: FOLDER=CLASS,... "
        "(e.g. NORMAL=normal,PNEUMONIA=pneumonia; several folders may map onto one class)",
    )
    p.add_argument("--image-size", type=int, help="image folders: resize every image to NxN when decoding")
    p.add_argument("--server", help="coordinator HOST:PORT; required")
    p.add_argument("--name", help="hospital name (default: the name in the folder's manifest)")
    p.add_argument(
        "--tls-cert", type=Path, help="this hospital's certificate (fed-certs client); its name is the identity"
    )
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.add_argument("--tls-ca", type=Path, help="the federation's CA certificate, to verify the coordinator")
    p.add_argument("--server-name", help="the name on the coordinator's certificate, when --server is an IP address")
    p.add_argument("--insecure", action="store_true", help="connect without TLS (plaintext)")
    p.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads for training (default: PyTorch's choice)")
    p.add_argument(
        "--max-wait",
        type=float,
        help=f"seconds to keep retrying an unreachable coordinator (default {d('max_wait')})",
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars (default: only on a terminal)"
    )
    dp = p.add_argument_group(
        "differential privacy",
        "Local DP clips this hospital's update to L2 norm C and adds N(0, (σC)²) before it leaves; with "
        "--dp-sgd, every patient's gradient is clipped and noised instead (Opacus). Spending is counted in a "
        "ledger file that survives restarts.",
    )
    dp.add_argument("--dp-clip", type=float, help="C: the L2 bound of the update (or of each gradient, with --dp-sgd)")
    dp.add_argument("--dp-noise-multiplier", type=float, help="σ: noise standard deviation in units of C")
    dp.add_argument("--dp-sgd", action="store_true", help="per-patient DP-SGD instead of noising the update")
    dp.add_argument("--dp-delta", type=float, help="δ of the reported (ε, δ) (default min(1e-5, 1/(10 n)))")
    dp.add_argument(
        "--dp-target-epsilon",
        type=float,
        help="stop taking part (exit 0) before a round would push ε above this",
    )
    dp.add_argument("--dp-ledger", type=Path, help="privacy ledger file (default DATA/privacy-ledger.json)")
    p.add_argument(
        "--policy",
        type=Path,
        help="this hospital's policy file (TOML): allowed models, most local epochs and rounds, DP required with at "
        "most ε, allowed coordinators; a task that breaks it is refused, naming the rule (README: operator guide)",
    )
    p.add_argument(
        "--stay",
        action="store_true",
        help="run as a service: after a federation ends (or this node leaves one), wait for the coordinator's next "
        "one, across coordinator restarts, until stopped",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where this hospital keeps SCAFFOLD's control variate and FedBN's normalisation layers between "
        "rounds and restarts (default DATA/medfed-state; needed when the data folder is read-only)",
    )
    p.add_argument(
        "--simulate-attack",
        metavar="ATTACK",
        help="research only: poison this hospital's contribution (label-flip, sign-flip, scale:K, gaussian:SIGMA) "
        "to test a defence; logged as a simulation every round",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _identity(cfg: ClientConfig) -> str | None:
    """Under TLS the hospital is the name on its certificate, checked locally before any connection."""
    if not cfg.tls:
        return None
    cert, key, ca = cfg.tls_paths()
    name = common_name(check_pair(cert, key, ca, server=False))
    if cfg.name is not None and cfg.name != name:
        raise CliError(f"--name {cfg.name} differs from {name}, the name in {cert}", EXIT_USAGE)
    return name


def _channel(cfg: ClientConfig) -> grpc.Channel:
    options = channel_options()
    if not cfg.tls:
        return grpc.insecure_channel(cfg.server, options=options)
    if cfg.server_name:
        options.append(("grpc.ssl_target_name_override", cfg.server_name))
    return grpc.secure_channel(cfg.server, channel_credentials(*cfg.tls_paths()), options=options)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


def check_resolvable(server: str) -> None:
    """A coordinator name that does not exist is a typo: refused now, not retried for --max-wait. A
    resolver that is only unreachable for the moment (EAI_AGAIN) is left to the retries."""
    host, port = parse_address(server)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise CliError(
                f"--server: the host name {host} does not resolve ({exc.strerror}); check its spelling, or give "
                "the coordinator's IP address with --server-name set to the name on its certificate",
                EXIT_USAGE,
            ) from None
        log.warning("cannot resolve %s for now (%s); the connection attempts will retry", host, exc.strerror)


def _run(argv: Sequence[str] | None) -> int:
    flags = vars(build_parser().parse_args(argv))
    file_values = load_toml(flags.pop("config")) if "config" in flags else {}
    cfg = build_config(ClientConfig, file_values, flags)
    setup_logging(cfg.verbose)
    if not cfg.tls and not cfg.insecure:
        raise CliError(
            "refusing to connect without TLS: give --tls-cert, --tls-key and --tls-ca (from fed-certs), "
            "or --insecure to accept plaintext",
            EXIT_USAGE,
        )
    check_resolvable(cfg.server)
    name = _identity(cfg)
    policy = load_policy(cfg.policy) if cfg.policy is not None else None
    if policy is not None:
        policy.check_coordinator(cfg.server_name or parse_address(cfg.server)[0], tls=cfg.tls)
    # PyTorch (seconds to import) only once the flags are known to be good: --help and typos stay fast.
    import torch

    from medfed.client.connection import GrpcConnection
    from medfed.client.identity import Identity
    from medfed.client.local_state import STATE_FOLDER
    from medfed.client.node import HospitalNode
    from medfed.client.privacy import LEDGER_FILE, BudgetExhausted, HospitalPrivacy
    from medfed.client.probe import Probe
    from medfed.client.protocol import NodeError
    from medfed.client.receipts import Provenance
    from medfed.client.trainer import TaskError, Trainer
    from medfed.common.ml.training import pick_device

    data = load_hospital(
        cfg.data, require=("train",), classes=cfg.classes, image_size=cfg.image_size, class_map=cfg.class_map
    )
    name = name or cfg.name or data.name
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    log.info(
        "%s: %d training and %d validation images of %s on %s",
        name,
        len(data.split("train")),
        len(data.split("val")),
        data.info.dataset,
        device,
    )
    train_size = len(data.split("train"))
    privacy = HospitalPrivacy(
        cfg.own_dp,
        num_examples=train_size,
        delta=cfg.dp_delta or default_delta(train_size),
        target_epsilon=cfg.dp_target_epsilon,
        ledger_path=cfg.dp_ledger or cfg.data / LEDGER_FILE,
    )
    try:
        privacy.check_start()
    except BudgetExhausted as exc:
        log.warning("%s", exc)
        return 0
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    with _channel(cfg) as channel:
        connection = GrpcConnection(
            pb_grpc.FederationStub(channel),
            server=cfg.server,
            max_wait=cfg.max_wait,
            tls=cfg.tls,
            server_name=cfg.server_name,
            diagnose=Probe(cfg.server, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.server_name).diagnose,
        )
        log.info("connecting to the coordinator at %s", cfg.server)
        if cfg.attack is not None:
            log.warning("SIMULATED ATTACK: this hospital is %s in every round (--simulate-attack, for research on "
                        "defences only)", cfg.attack.describe())  # fmt: skip
        trainer = Trainer(data, device, name=name, progress=progress, attack=cfg.attack, state_dir=cfg.state_dir)
        identity = Identity.load(*cfg.tls_paths()) if cfg.tls else None
        provenance = Provenance(identity, name, cfg.state_dir or data.path / STATE_FOLDER) if identity else None
        if provenance is not None:
            provenance.check_folder()
        node = HospitalNode(connection, data, trainer, name=name, max_wait=cfg.max_wait, privacy=privacy,
                            policy=policy, stay=cfg.stay, identity=identity, provenance=provenance)  # fmt: skip
        if policy is not None:
            log.info("policy %s: every task is checked against it before training", cfg.policy)
        try:
            node.run()
        except BudgetExhausted as exc:
            log.warning("%s", exc)
            node.leave("privacy budget reached")
        except (NodeError, TaskError) as exc:
            node.leave(str(exc)[:MAX_TEXT])
            raise CliError(str(exc)) from None
        except _Stop as stop:
            log.info("stopping on %s; leaving the federation", stop)
            node.leave(f"hospital stopped by {stop}")
            return 128 + stop.signum
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-client", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
