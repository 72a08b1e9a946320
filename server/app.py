"""fed-server: the coordinator's command line."""

from __future__ import annotations

import os

# Before gRPC loads: its C core would print TLS handshake details that this command reports itself.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import grpc

from medfed.common import files
from medfed.common.cli import EXIT_USAGE, CliError, command_parser, run_command, setup_logging
from medfed.common.config import build_config, is_loopback, load_toml, parse_address
from medfed.common.data.folders import DatasetInfo
from medfed.common.dp.accounting import epsilon, rounds_within
from medfed.common.errors import ConfigError
from medfed.common.limits import ENCODINGS, LR_SCHEDULES, MODEL_NAMES, STRATEGIES
from medfed.common.pki import check_pair, load_cert, load_key
from medfed.common.provenance.signing import Signer
from medfed.common.wire.tls import server_credentials
from medfed.server.admin_service import AdminServicer
from medfed.server.audit_log import AuditLog
from medfed.server.auth import PeerAuthenticator
from medfed.server.config import DEFAULT_DASHBOARD, ServerConfig
from medfed.server.control import RunControl
from medfed.server.coordinator import Coordinator
from medfed.server.driver import FederationAborted, run_federation
from medfed.server.health import health_only_server, make_health
from medfed.server.live.monitor import Monitor
from medfed.server.live.web import Dashboard
from medfed.server.memory import share_one_malloc_arena
from medfed.server.model_helper.host import ModelHost
from medfed.server.run_dir import CHECKPOINT_FILE, Resumed, RunDir, check_settings
from medfed.server.servicer import create_server
from medfed.server.strategy.registry import FEDAVGM_LR, FEDOPT_LR, PROX_MU, TRIM_FRACTION, central_strategy

log = logging.getLogger("medfed.server")

EXAMPLES = """
examples:
  fed-server --tls-cert pki/server.crt --tls-key pki/server.key --tls-ca pki/ca.crt --tls-crl pki/crl.pem \
             --allow hospital_a,hospital_b,hospital_c --rounds 20 --min-clients 3 --model resnet18 \
             --test-data /data/test --out runs/oct
  fed-server --config server.toml --rounds 5        (flags override the file)
  fed-server --insecure --rounds 3 --min-clients 2  (plaintext: trusted networks and trials only)
"""


def build_parser() -> argparse.ArgumentParser:
    p, d = command_parser(
        "fed-server",
        "Coordinate federated training: hospitals join, train locally, and send back updates "
        "that are averaged by sample count (FedAvg).",
        EXAMPLES,
        ServerConfig,
    )
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below (flags win)")
    p.add_argument("--address", help=f"HOST:PORT to listen on (default {d('address')}; port 0 picks a free one)")
    p.add_argument("--rounds", type=int, help=f"number of rounds (default {d('rounds')})")
    p.add_argument(
        "--min-clients",
        type=int,
        help=f"hospitals that must join before round 1 (default {d('min_clients')})",
    )
    p.add_argument("--clients-per-round", type=int, help="hospitals sampled per round with --seed (default: all)")
    p.add_argument(
        "--over-select",
        type=int,
        help="choose this many hospitals more than --clients-per-round and close at the first that many updates",
    )
    p.add_argument("--min-fit", type=int, help="updates a round needs to close (default: --min-clients)")
    p.add_argument(
        "--round-timeout",
        type=float,
        help=f"seconds a round waits for updates (default {d('round_timeout')})",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        help=f"seconds without a call after which a hospital is taken for gone (default {d('heartbeat_timeout')})",
    )
    p.add_argument(
        "--join-timeout", type=float, help=f"seconds to wait for --min-clients (default {d('join_timeout')})"
    )
    p.add_argument("--model", choices=MODEL_NAMES, help=f"architecture (default {d('model')})")
    p.add_argument(
        "--local-epochs",
        type=int,
        help=f"epochs per round at each hospital; 0 = no training (default {d('local_epochs')})",
    )
    p.add_argument("--lr", type=float, help=f"hospitals' Adam learning rate (default {d('lr')})")
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="constant, or cosine decay of --lr over the rounds (default constant)",
    )
    p.add_argument(
        "--update-encoding",
        choices=ENCODINGS,
        help="how hospitals may compress their updates: lossless (default), fp16, bf16, or int8 deltas",
    )
    p.add_argument("--batch-size", type=int, help=f"hospitals' batch size (default {d('batch_size')})")
    p.add_argument("--seed", type=int, help=f"seed for the initial model and hospital sampling (default {d('seed')})")
    p.add_argument(
        "--test-data",
        type=Path,
        help="held-out test set evaluated after every round: a fed-partition folder's test split, or an image "
        "folder (test/CLASS/*.png or CLASS/*.png)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="hospitals shift and rotate each training batch at random (on tensors, no flips)",
    )
    p.add_argument(
        "--pretrained",
        type=Path,
        help="start from these weights (.safetensors, or a .pt/.pth state_dict such as torchvision's "
        "resnet18-f37072fd.pth); the first convolution is adapted to the data's channels, the classifier is new",
    )
    p.add_argument(
        "--image-size", type=int, help="an image-folder --test-data: resize every image to NxN when decoding"
    )
    p.add_argument("--out", type=Path, help=f"folder for history.jsonl and the final model (default {d('out')})")
    p.add_argument("--force", action="store_true", help="replace a previous run's files in --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out after its last completed round (same settings; --rounds may grow)",
    )
    p.add_argument("--tls-cert", type=Path, help="the coordinator's certificate (fed-certs server)")
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.add_argument("--tls-ca", type=Path, help="the federation's CA certificate: hospitals must present one it issued")
    p.add_argument("--tls-crl", type=Path, help="revocation list (fed-certs revoke); re-read when it changes")
    p.add_argument("--allow", help="comma-separated hospital names that may join (default: any the CA certified)")
    p.add_argument(
        "--max-examples", type=int, help="largest training-set size a hospital may declare (default 1000000)"
    )
    p.add_argument(
        "--max-concurrent-uploads",
        type=int,
        help="updates received at once at most, each at its hospital's pace (the others wait, having sent only "
        "their header): two into memory, more while every upload under way is held back by its link and memory "
        f"allows, written to OUT/receiving/ (default {d('max_concurrent_uploads')})",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        help="seconds a model download or an update upload may go without progress before it is cancelled and "
        f"its slot given to another hospital (default {d('stall_timeout')})",
    )
    p.add_argument(
        "--max-concurrent-downloads",
        type=int,
        help="hospitals sent the model at once at most: four, more while every download under way is held back "
        f"by its link and memory allows; the others wait (default {d('max_concurrent_downloads')})",
    )
    p.add_argument("--insecure", action="store_true", help="run without TLS (plaintext, hospitals not authenticated)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening (for scripts)")
    p.add_argument(
        "--health-address",
        help="also answer grpc.health.v1 checks in plaintext on HOST:PORT (for container probes: fed-health)",
    )
    p.add_argument(
        "--dashboard-address",
        help=f"HOST:PORT of the live dashboard and Prometheus /metrics (default {DEFAULT_DASHBOARD}; 'off' for none; "
        "an address other machines can reach needs --dashboard-token, or TLS: then only operators' certificates)",
    )
    p.add_argument(
        "--dashboard-token",
        help="a secret of 16+ characters every dashboard and /metrics request must carry (Authorization: Bearer, "
        "or ?token= in the page's address); better given in the --config file than on the command line",
    )
    p.add_argument("--dashboard-port-file", type=Path, help="write the dashboard's bound port here (for scripts)")
    p.add_argument("--device", help="evaluation device: auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--finish-grace",
        type=float,
        help=f"seconds to let hospitals hear the run is over (default {d('finish_grace')})",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    agg = p.add_argument_group(
        "aggregation",
        "How the coordinator combines the hospitals' updates (README: choosing a strategy). fedavg: the "
        "weighted mean; fedavgm: with server momentum; fedadam, fedyogi, fedadagrad: adaptive server optimizers; "
        "fedprox: FedAvg with a proximal term in each hospital's loss; "
        "median, trimmed-mean, krum, multi-krum: robust to poisoned updates; norm-bound: FedAvg of updates "
        "scaled to --norm-bound.",
    )
    agg.add_argument("--strategy", choices=STRATEGIES, help="aggregation strategy (default fedavg)")
    agg.add_argument(
        "--server-lr",
        type=float,
        help=f"η: the server's step on the mean update (default {FEDAVGM_LR:g} for fedavgm, {FEDOPT_LR:g} for the "
        "adaptive ones)",
    )
    agg.add_argument("--server-momentum", type=float, help="fedavgm's momentum β (default 0.9)")
    agg.add_argument("--server-beta1", type=float, help="the adaptive optimizers' first-moment β1 (default 0.9)")
    agg.add_argument("--server-beta2", type=float, help="fedadam's and fedyogi's second-moment β2 (default 0.99)")
    agg.add_argument("--server-tau", type=float, help="τ: the adaptive optimizers' step bound (default 0.001)")
    agg.add_argument(
        "--trim-fraction",
        type=float,
        help=f"trimmed-mean's β: the share dropped at each end (default {TRIM_FRACTION:g})",
    )
    agg.add_argument("--krum-f", type=int, help="krum's and multi-krum's f: poisoned hospitals to tolerate (default 1)")
    agg.add_argument("--krum-m", type=int, help="multi-krum's m: updates averaged (default: n - f)")
    agg.add_argument("--prox-mu", type=float, help=f"fedprox's μ: weight of the proximal term (default {PROX_MU:g})")
    agg.add_argument(
        "--norm-bound",
        type=float,
        help="scale each update's difference from the global model to L2 norm at most B, in front of --strategy",
    )
    sec = p.add_argument_group(
        "secure aggregation",
        "SecAgg+ (README: secure aggregation): the coordinator learns only the weighted sum of the hospitals' "
        "updates, never one of them. Needs TLS; works with fedavg and fedprox, lossless encoding, and local DP.",
    )
    sec.add_argument("--secure-aggregation", action="store_true", help="sum masked updates (SecAgg+)")
    sec.add_argument(
        "--secure-clip",
        type=float,
        help=f"each coordinate of a hospital's difference from the global model is clipped to ±C before masking "
        f"(default {d('secure_clip')})",
    )
    sec.add_argument(
        "--secure-threshold",
        type=int,
        help="shares that rebuild a secret, in each hospital's neighbourhood (default: more than two thirds)",
    )
    sec.add_argument(
        "--secure-stage-timeout",
        type=float,
        help=f"seconds each key, share, confirmation and reveal stage waits (default {d('secure_stage_timeout')})",
    )
    dp = p.add_argument_group(
        "differential privacy",
        "--dp-central: clip each hospital's update to C, average with equal weights, add N(0, (σC)²) to the sum. "
        "--dp-local: ask every hospital to clip and noise its own update (a hospital's own flags win over a "
        "weaker request). Both need a GroupNorm model (cnn_gn, resnet18_gn).",
    )
    dp.add_argument("--dp-central", action="store_true", help="central DP on the coordinator (DP-FedAvg)")
    dp.add_argument("--dp-local", action="store_true", help="ask hospitals for local DP on their updates")
    dp.add_argument("--dp-clip", type=float, help="C: L2 bound of each hospital's update (initial C when adaptive)")
    dp.add_argument("--dp-noise-multiplier", type=float, help="σ: noise standard deviation in units of C")
    dp.add_argument(
        "--dp-delta", type=float, help="δ per hospital for central DP (default min(1e-5, 1/(10 · --min-clients)))"
    )
    dp.add_argument("--dp-target-epsilon", type=float, help="refuse to run rounds that would push ε above this")
    dp.add_argument(
        "--dp-adaptive-clip", action="store_true", help="move C towards a quantile of the update norms (Andrew et al.)"
    )
    dp.add_argument(
        "--dp-target-quantile",
        type=float,
        help=f"norm quantile adaptive clipping aims at (default {d('dp_target_quantile')})",
    )
    dp.add_argument(
        "--dp-clip-learning-rate",
        type=float,
        help=f"adaptive clipping's geometric step (default {d('dp_clip_learning_rate')})",
    )
    return p


def check_privacy(cfg: ServerConfig, rounds: int | None = None) -> None:
    """DP settings that cannot work are start-up errors naming the flag (the model's fit to DP is
    checked by the model helper, which has PyTorch); ``rounds``: a number other than --rounds (fed-admin
    extend)."""
    rounds = rounds or cfg.rounds
    if not (cfg.dp_central or cfg.dp_local) or cfg.dp_target_epsilon is None:
        return
    strategy = central_strategy(cfg)
    if cfg.dp_noise_multiplier == 0:
        raise ConfigError("--dp-target-epsilon cannot be met with --dp-noise-multiplier 0 (no noise: ε is infinite)")
    fits = rounds_within(strategy.spend(), cfg.central_delta, cfg.dp_target_epsilon, rounds)
    if fits < rounds:
        total = epsilon([strategy.spend().model_copy(update={"steps": rounds})], cfg.central_delta)
        raise ConfigError(
            f"--dp-target-epsilon {cfg.dp_target_epsilon:g}: {rounds} rounds would spend ε = {total:.3g} "
            f"(δ = {cfg.central_delta:.2g}); at most {fits} round(s) fit: lower --rounds or raise "
            "--dp-noise-multiplier"
        )


def check_bindable(address: str) -> None:
    """Fail with a one-line reason before gRPC tries (and logs its own multi-line error)."""
    host, port = parse_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {address}: {exc.strerror}", EXIT_USAGE) from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise CliError(f"cannot listen on {address}: {exc.strerror}", EXIT_USAGE) from None


def _write_port_file(path: Path, port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, f"{port}\n")


def _resume(cfg: ServerConfig, run_dir: RunDir) -> Resumed | None:
    if run_dir.nothing_completed():
        log.warning("--resume: %s holds no completed round yet; starting at round 1", cfg.out)
        return None
    resumed = run_dir.load_checkpoint()
    checkpoint = resumed.checkpoint
    check_settings(checkpoint.settings, cfg.resume_settings())
    if checkpoint.round >= cfg.rounds:
        raise ConfigError(
            f"--resume: the run in {cfg.out} has already completed {checkpoint.round} of --rounds {cfg.rounds}; "
            "give a larger --rounds to train further"
        )
    run_dir.truncate_history(checkpoint.round)
    run_dir.clear_update_store()
    return resumed


def _audit_log(cfg: ServerConfig, run_dir: RunDir, federation_id: str) -> AuditLog:
    """The run's audit chain, signed with the coordinator's TLS key (unsigned on an --insecure run)."""
    if not cfg.tls:
        return AuditLog(run_dir.audit_path, federation_id)
    cert, key, ca = cfg.tls_paths()
    return AuditLog(run_dir.audit_path, federation_id, Signer(load_key(key), load_cert(cert)), load_cert(ca))


def _tls(cfg: ServerConfig) -> tuple[grpc.ServerCredentials | None, PeerAuthenticator | None]:
    """Check the coordinator's certificate, key, CA and CRL before listening, with a reason if unusable."""
    if not cfg.tls:
        return None, None
    cert, key, ca = cfg.tls_paths()
    check_pair(cert, key, ca, server=True)
    return server_credentials(cert, key, ca), PeerAuthenticator(load_cert(ca), cfg.tls_crl)


def _dashboard(cfg: ServerConfig, monitor: Monitor, authenticator: PeerAuthenticator | None) -> Dashboard | None:
    """The dashboard on --dashboard-address; the default address, when taken (a second coordinator on this
    machine), gives way to a free port with a warning, while an address asked for is an error.

    Other machines reach it over HTTPS when the coordinator has TLS, with --dashboard-token or, without
    one, only with an operator's certificate (fed-certs admin) checked as fed-admin's is."""
    if cfg.dashboard_address is None:
        return None
    host, _ = parse_address(cfg.dashboard_address)
    tls, operator = None, None
    if cfg.tls and not is_loopback(host):  # the token must not cross the network in plaintext
        cert, key, ca = cfg.tls_paths()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        if cfg.dashboard_token is None and authenticator is not None:
            tls.verify_mode = ssl.CERT_REQUIRED
            tls.load_verify_locations(ca)
            operator = authenticator.operator
    elif not is_loopback(host):
        log.warning("the dashboard on %s is plain HTTP: its token travels unencrypted (run the coordinator with "
                    "TLS to serve it over HTTPS)", cfg.dashboard_address)  # fmt: skip
    try:
        return Dashboard(monitor, cfg.dashboard_address, token=cfg.dashboard_token, tls=tls, operator=operator)
    except OSError as exc:
        if cfg.dashboard_address != DEFAULT_DASHBOARD:
            raise CliError(
                f"cannot serve the dashboard on {cfg.dashboard_address}: {exc.strerror}", EXIT_USAGE
            ) from None
        log.warning("the dashboard's default address %s is taken (%s); using a free port instead", DEFAULT_DASHBOARD,
                    exc.strerror)  # fmt: skip
        return Dashboard(monitor, f"{host}:0", token=cfg.dashboard_token)


def _install_signal_handlers(coordinator: Coordinator, received: list[int]) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        # Never touch the coordinator's lock from a signal handler: the main thread may hold it.
        threading.Thread(
            target=coordinator.finish,
            args=(f"coordinator stopped by {signal.Signals(signum).name}", 0),
            kwargs={"resumable": True},
            daemon=True,
        ).start()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _run(argv: Sequence[str] | None) -> int:
    share_one_malloc_arena()  # before gRPC starts its threads: memory flat in the number of hospitals
    flags = vars(build_parser().parse_args(argv))
    file_values = load_toml(flags.pop("config")) if "config" in flags else {}
    cfg = build_config(ServerConfig, file_values, flags)
    setup_logging(cfg.verbose)
    if not cfg.tls and not cfg.insecure:
        raise CliError(
            "refusing to start without TLS: give --tls-cert, --tls-key and --tls-ca (make them with fed-certs), "
            "or --insecure to accept plaintext",
            EXIT_USAGE,
        )
    check_privacy(cfg)
    credentials, authenticator = _tls(cfg)
    check_bindable(cfg.address)
    with ModelHost(verbose=cfg.verbose) as models:
        return _serve(cfg, models, credentials, authenticator)


def _serve(
    cfg: ServerConfig,
    models: ModelHost,
    credentials: grpc.ServerCredentials | None,
    authenticator: PeerAuthenticator | None,
) -> int:
    run_dir = RunDir(cfg.out)
    fresh = not cfg.resume or run_dir.nothing_completed()
    info = models.check(
        model=cfg.model,
        dp=cfg.dp_central or cfg.dp_local,
        test_data=str(cfg.test_data) if cfg.test_data else None,
        image_size=cfg.image_size,
        device=cfg.device,
        pretrained=str(cfg.pretrained) if cfg.pretrained else None,
        check_pretrained=fresh,  # refuse a wrong file now, not when hospitals have joined
    )
    resume = _resume(cfg, run_dir) if cfg.resume else None
    if resume is None:
        run_dir.prepare(force=cfg.force or cfg.resume)
    else:
        if info is None:
            models.close()  # the checkpoint has the model and there is no test set: PyTorch is not needed
        saved = DatasetInfo.model_validate(resume.checkpoint.data)
        if info is not None and (reason := saved.mismatch(info)):
            raise ConfigError(f"--test-data: its {reason} (the run being resumed used {saved.dataset})")
        info = saved
    allowed = frozenset(cfg.allow) if cfg.allow is not None else None
    monitor = Monitor()
    dashboard = _dashboard(cfg, monitor, authenticator)
    audit = _audit_log(cfg, run_dir, resume.checkpoint.federation_id if resume else secrets.token_hex(8))
    coordinator = Coordinator(
        data_info=info,
        allowed=allowed,
        max_examples=cfg.max_examples,
        federation_id=audit.federation_id,
        heartbeat_timeout=cfg.heartbeat_timeout,
        max_receiving=cfg.max_concurrent_uploads,
        spool_dir=run_dir.receiving,
        monitor=monitor,
        receipts=audit,
    )
    if resume is not None:
        coordinator.keep_out(run_dir.removed())
    control = RunControl(
        coordinator, cfg.rounds, save_removed=run_dir.save_removed, check_rounds=lambda n: check_privacy(cfg, n)
    )
    if authenticator is not None:
        authenticator.on_revoked = coordinator.revoke
        authenticator.watch()
    health = make_health()
    server, port = create_server(
        coordinator, cfg.address, credentials=credentials, authenticator=authenticator,
        poll_timeout=cfg.poll_timeout, upload_timeout=cfg.round_timeout, max_workers=cfg.max_workers,
        health=health, max_sending=cfg.max_concurrent_downloads, stall_timeout=cfg.stall_timeout,
        admin=AdminServicer(coordinator, control, authenticator),
    )  # fmt: skip
    servers = [server]
    if dashboard is not None:
        dashboard.start()
        needs = "; requests need the --dashboard-token" if cfg.dashboard_token else ""
        if dashboard.operators_only:
            needs = "; browsers and scrapers need an operator's certificate (fed-certs admin)"
        log.info("dashboard on %s (Prometheus metrics at %smetrics)%s", dashboard.url, dashboard.url, needs)
        if cfg.dashboard_port_file:
            _write_port_file(cfg.dashboard_port_file, dashboard.port)
    if cfg.health_address:
        check_bindable(cfg.health_address)
        health_server, health_port = health_only_server(cfg.health_address, health)
        servers.append(health_server)
        health_server.start()
        log.info(
            "health checks (grpc.health.v1, plaintext) on %s:%d", parse_address(cfg.health_address)[0], health_port
        )
    server.start()
    host, _ = parse_address(cfg.address)
    if cfg.tls:
        log.info(
            "mutual TLS: hospitals need a certificate from %s%s",
            cfg.tls_ca,
            f"; allowed: {cfg.allow}" if allowed else "",
        )
    else:
        log.warning("INSECURE: no TLS; model updates travel in plaintext and any process can join as any hospital")
    log.info("listening on %s:%d; results go to %s", host, port, cfg.out)
    if cfg.port_file:
        _write_port_file(cfg.port_file, port)
    received: list[int] = []
    _install_signal_handlers(coordinator, received)
    try:
        completed = run_federation(cfg, coordinator, run_dir, models, resume, control, audit)
        untold = coordinator.wait_until_told(cfg.finish_grace)
        if untold:
            log.warning("did not hear from %s after the last round", ", ".join(untold))
        log.info("federation complete: %d rounds; history in %s", completed, run_dir.history_path)
        return 0
    except FederationAborted as exc:
        coordinator.finish(str(exc), 0)
        monitor.phase("stopped")
        monitor.event("finished", f"stopped before the last round: {exc}")
        coordinator.wait_until_told(min(cfg.finish_grace, 5.0))
        hint = ""
        if (run_dir.directory / CHECKPOINT_FILE).exists():
            hint = "; the last completed round is checkpointed: continue with the same command and --resume"
        if control.stopped_by is not None and not received:  # what the operator asked for: not a failure
            log.warning("stopped before the last round: %s%s", exc, hint)
            return 0
        code = 128 + received[0] if received else 1
        raise CliError(f"stopped before the last round: {exc}{hint}", code) from None
    finally:
        health.enter_graceful_shutdown()
        if authenticator is not None:
            authenticator.close()
        for each in servers:
            each.stop(grace=2.0).wait()
        if dashboard is not None:
            dashboard.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-server", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
