"""fed-admin: an operator's commands against a running coordinator, over its gRPC port.

    fed-admin status | hospitals | stop [--resumable] | remove NAME | extend --rounds N

Under TLS it presents an operator's certificate (``fed-certs admin --name ops``); the coordinator
refuses a hospital's (PERMISSION_DENIED). Every answer is one line or a small table; a refusal is
one line with the coordinator's reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import grpc
from pydantic import AfterValidator, ConfigDict, Field, model_validator

from medfed.common.cli import EXIT_USAGE, CliError, command_parser, run_command, setup_logging
from medfed.common.config import TlsFiles, build_config, check_address, load_toml
from medfed.common.peer_text import cleaned
from medfed.common.pki import check_pair, is_admin
from medfed.common.wire.options import channel_options
from medfed.common.wire.proto import pb, pb_grpc
from medfed.common.wire.tls import channel_credentials

EXAMPLES = """
examples:
  fed-admin --server coordinator.example.org:8443 --tls-cert pki/ops.crt --tls-key pki/ops.key \\
            --tls-ca pki/ca.crt status
  fed-admin --config admin.toml hospitals
  fed-admin --config admin.toml remove hospital_c --reason "sent a poisoned update"
  fed-admin --config admin.toml extend --rounds 40
  fed-admin --config admin.toml stop --resumable
  fed-admin --server 127.0.0.1:8443 --insecure status     (an --insecure coordinator: from its own machine only)
"""

EXIT_REFUSED = 3


class AdminConfig(TlsFiles):
    model_config = ConfigDict(extra="forbid")

    server: Annotated[str, AfterValidator(check_address)]
    server_name: str | None = Field(None, min_length=1, max_length=253)
    timeout: float = Field(30.0, gt=0, le=3600)
    verbose: bool = False

    @model_validator(mode="after")
    def _secure(self) -> AdminConfig:
        if not self.tls and not self.insecure:
            raise ValueError(
                "give --tls-cert, --tls-key and --tls-ca (an operator's, from fed-certs admin), or --insecure"
            )
        return self


def build_parser() -> argparse.ArgumentParser:
    p, d = command_parser("fed-admin", "Watch and steer a running federation from the command line.", EXAMPLES,
                          AdminConfig)  # fmt: skip
    p.add_argument("--config", type=Path, help="TOML file with the connection settings below (flags win)")
    p.add_argument("--server", help="the coordinator's HOST:PORT (its gRPC port, as hospitals use it); required")
    p.add_argument("--tls-cert", type=Path, help="an operator's certificate (fed-certs admin --name NAME)")
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.add_argument("--tls-ca", type=Path, help="the federation's CA certificate")
    p.add_argument("--server-name", help="the name on the coordinator's certificate, when --server is an IP address")
    p.add_argument("--insecure", action="store_true", help="plaintext, to an --insecure coordinator on this machine")
    p.add_argument("--timeout", type=float, help=f"seconds to wait for an answer (default {d('timeout')})")
    p.add_argument("--verbose", action="store_true", help="tracebacks on failure")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("status", "where the run is: round, phase, hospitals by state, last test figures"),
                       ("hospitals", "one line per hospital: state, last call, rounds, bytes, ε")):  # fmt: skip
        sub.add_parser(name, help=text).add_argument(
            "--json", action="store_true", help="print the status document (as GET /api/status gives it)"
        )
    stop = sub.add_parser("stop", help="end the run now (the last completed round stays checkpointed)")
    stop.add_argument("--resumable", action="store_true", help="hospitals wait for fed-server --resume to continue")
    stop.add_argument("--reason", default="", help="said to the hospitals and in the log")
    remove = sub.add_parser("remove", help="end a hospital's session at once and refuse it for the rest of the run")
    remove.add_argument("name", help="the hospital's name")
    remove.add_argument("--reason", default="", help="recorded in the log and the dashboard's events")
    extend = sub.add_parser("extend", help="train until round N instead of the planned last round")
    extend.add_argument("--rounds", type=int, required=True, help="the new last round")
    return p


def _channel(cfg: AdminConfig) -> grpc.Channel:
    options = channel_options()
    if not cfg.tls:
        return grpc.insecure_channel(cfg.server, options=options)
    cert, key, ca = cfg.tls_paths()
    if not is_admin(check_pair(cert, key, ca, server=False)):
        raise CliError(
            f"{cert} is not an operator's certificate: make one with fed-certs admin --name NAME", EXIT_USAGE
        )
    if cfg.server_name:
        options.append(("grpc.ssl_target_name_override", cfg.server_name))
    return grpc.secure_channel(cfg.server, channel_credentials(cert, key, ca), options=options)


def _ago(now: float, then: float) -> str:
    return "-" if not then else f"{max(0.0, now - then):.0f} s ago"


def describe(status: dict[str, Any]) -> list[str]:
    """fed-admin status: the federation in a few lines."""
    now = float(status["now"])
    states: dict[str, int] = {}
    for hospital in status["hospitals"]:
        states[hospital["state"]] = states.get(hospital["state"], 0) + 1
    lines = [
        f"federation {status['federation_id']}: {status['strategy']}, round {status['round']} of "
        f"{status['total_rounds']} ({status['rounds_completed']} completed)",
        f"phase: {status['phase']} for {max(0.0, now - status['phase_since']):.0f} s"
        + (f"; deadline in {max(0.0, status['deadline'] - now):.0f} s" if status["deadline"] else ""),
        "hospitals: " + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none yet"),
    ]
    tested = [r for r in status["rounds"] if r["accuracy"] is not None]
    if tested:
        last = tested[-1]
        auc = f", macro AUC {last['auc']:.4f}" if last["auc"] is not None else ""
        lines.append(f"round {last['round']}: test accuracy {last['accuracy']:.4f}{auc}, loss {last['loss']:.4f}")
    spent = [r["epsilon"] for r in status["rounds"] if r["epsilon"] is not None]
    if status["privacy"] != "none" or spent:
        lines.append(f"privacy: {status['privacy']} DP" + (f", ε = {spent[-1]:.3g} so far" if spent else ""))
    if status["refusals"]:
        lines.append("refusals: " + ", ".join(f"{code} {n}" for code, n in sorted(status["refusals"].items())))
    return lines


def hospital_table(status: dict[str, Any]) -> list[str]:
    now = float(status["now"])
    rows = [f"{'name':<24} {'state':<11} {'last call':>10} {'rounds':>6} {'down MB':>8} {'up MB':>8} {'ε':>6}  "
            "certificate expires / detail"]  # fmt: skip
    for h in status["hospitals"]:
        epsilon = "-" if h["epsilon"] is None else f"{h['epsilon']:.2f}"
        expires = h["certificate_expires"] or "no TLS"
        detail = f"  {h['detail']}" if h["detail"] else ""
        rows.append(
            f"{h['name']:<24} {h['state']:<11} {_ago(now, h['last_seen']):>10} {h['rounds']:>6} "
            f"{h['bytes_down'] / 1e6:>8.1f} {h['bytes_up'] / 1e6:>8.1f} {epsilon:>6}  {expires}{detail}"
        )
    if len(rows) == 1:
        rows.append("(no hospital has joined yet)")
    return rows


def _call(cfg: AdminConfig, args: argparse.Namespace) -> list[str]:
    with _channel(cfg) as channel:
        stub = pb_grpc.AdminStub(channel)
        if args.command in ("status", "hospitals"):
            reply = stub.Status(pb.StatusRequest(), timeout=cfg.timeout)
            status = json.loads(reply.status_json)
            if args.json:
                return [json.dumps(status, indent=1)]
            return describe(status) if args.command == "status" else hospital_table(status)
        if args.command == "stop":
            answer = stub.Stop(pb.StopRequest(resumable=args.resumable, reason=args.reason), timeout=cfg.timeout)
        elif args.command == "remove":
            answer = stub.Remove(pb.RemoveRequest(name=args.name, reason=args.reason), timeout=cfg.timeout)
        else:
            answer = stub.Extend(pb.ExtendRequest(rounds=args.rounds), timeout=cfg.timeout)
        return [cleaned(answer.message, 600)]


def _run(argv: Sequence[str] | None) -> int:
    parsed = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(parsed).items() if k in AdminConfig.model_fields or k == "config"}
    file_values = load_toml(flags.pop("config")) if "config" in flags else {}
    cfg = build_config(AdminConfig, file_values, flags)
    setup_logging(cfg.verbose)
    try:
        lines = _call(cfg, parsed)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        detail = cleaned(err.details() if isinstance(err, grpc.Call) else str(err), 300)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"cannot reach the coordinator at {cfg.server} ({code.name}: {detail})") from None
        if code is grpc.StatusCode.UNIMPLEMENTED:
            raise CliError(f"the coordinator at {cfg.server} has no Admin service (an older medfed?)") from None
        raise CliError(f"refused ({code.name}): {detail}", EXIT_REFUSED) from None
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-admin", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
