"""fed-certs: the federation's certificates in five commands (init, server, client, revoke, list).

All files live in one folder: ca.crt and ca.key (the federation CA), crl.pem (revocations), server.crt
and server.key, and NAME.crt and NAME.key per hospital. Give each party only its own key plus ca.crt;
ca.key signs everything and should stay offline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.common import pki
from medfed.common.cli import Parser, run_command, setup_logging
from medfed.common.errors import ConfigError
from medfed.common.limits import HOSPITAL_NAME

EXAMPLES = """
examples:
  fed-certs init   --dir pki
  fed-certs server --dir pki --host coordinator.example.org,10.0.0.5
  fed-certs client --dir pki --name hospital_a
  fed-certs admin  --dir pki --name ops          (an operator's certificate for fed-admin)
  fed-certs revoke --dir pki --name hospital_a
  fed-certs list   --dir pki
"""

RESERVED = {"ca", "crl", pki.SERVER_NAME}


def _load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not (folder / pki.CA_FILE).exists():
        raise ConfigError(f"--dir: {folder} has no {pki.CA_FILE}; run 'fed-certs init --dir {folder}' first")
    return pki.load_key(folder / pki.CA_KEY_FILE), pki.load_cert(folder / pki.CA_FILE)


def _check_days(days: int, ca: x509.Certificate | None = None) -> None:
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    if ca is not None and dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days) > ca.not_valid_after_utc:
        raise ConfigError(f"--days {days} would outlive the CA, which is valid until {ca.not_valid_after_utc:%Y-%m-%d}")


def _write_pair(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, force: bool) -> str:
    pki.write_private_key(folder / f"{stem}.key", key, force=force)
    pki.write_public(folder / f"{stem}.crt", cert)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    return f"wrote {folder / (stem + '.crt')} and {folder / (stem + '.key')} (valid until {until})"


def init_ca(
    folder: Path, name: str = "medfed federation CA", days: int = pki.CA_DAYS, force: bool = False
) -> list[str]:
    _check_days(days)
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = pki.make_ca(name, days)
    wrote = _write_pair(folder, "ca", key, cert, force)
    pki.write_public(folder / pki.CRL_FILE, pki.make_crl(key, cert, {}))
    return [wrote, f"wrote {folder / pki.CRL_FILE} (no revocations); keep {folder / pki.CA_KEY_FILE} offline"]


def issue_server(folder: Path, hosts: list[str], days: int = pki.LEAF_DAYS, force: bool = False) -> list[str]:
    if not hosts:
        raise ConfigError("--host needs at least one name or IP address the hospitals will connect to")
    ca_key, ca = _load_ca(folder)
    _check_days(days, ca)
    key, cert = pki.issue(ca_key, ca, hosts[0], server_hosts=hosts, days=days)
    wrote = _write_pair(folder, pki.SERVER_NAME, key, cert, force)
    return [wrote, f"the coordinator's certificate is valid for: {', '.join(hosts)}"]


def issue_client(folder: Path, name: str, days: int = pki.LEAF_DAYS, force: bool = False) -> list[str]:
    if not HOSPITAL_NAME.match(name) or name in RESERVED:
        raise ConfigError(f"--name {name!r}: use 1-64 letters, digits, '_', '.' or '-', and not {sorted(RESERVED)}")
    ca_key, ca = _load_ca(folder)
    _check_days(days, ca)
    key, cert = pki.issue(ca_key, ca, name, days=days)
    return [_write_pair(folder, name, key, cert, force)]


def issue_admin(folder: Path, name: str, days: int = pki.LEAF_DAYS, force: bool = False) -> list[str]:
    """An operator's certificate for fed-admin: it cannot join as a hospital, and no hospital's can do what it does."""
    if not HOSPITAL_NAME.match(name) or name in RESERVED:
        raise ConfigError(f"--name {name!r}: use 1-64 letters, digits, '_', '.' or '-', and not {sorted(RESERVED)}")
    ca_key, ca = _load_ca(folder)
    _check_days(days, ca)
    key, cert = pki.issue(ca_key, ca, name, days=days, admin=True)
    return [_write_pair(folder, name, key, cert, force), f"{name} may run fed-admin against the coordinator"]


def revoke(folder: Path, name: str) -> list[str]:
    ca_key, ca = _load_ca(folder)
    cert = pki.load_cert(folder / f"{name}.crt")
    crl_path = folder / pki.CRL_FILE
    crl = pki.load_crl(crl_path) if crl_path.exists() else None
    revoked = {entry.serial_number: entry.revocation_date_utc for entry in crl or []}
    if cert.serial_number in revoked:
        return [f"{name} (serial {cert.serial_number:x}) was already revoked"]
    revoked[cert.serial_number] = dt.datetime.now(dt.timezone.utc)
    pki.write_public(crl_path, pki.make_crl(ca_key, ca, revoked))
    return [f"revoked {name} (serial {cert.serial_number:x}); {crl_path} now lists {len(revoked)} certificate(s)"]


def describe(folder: Path) -> list[str]:
    ca = pki.load_cert(folder / pki.CA_FILE)
    crl_path = folder / pki.CRL_FILE
    revoked = pki.Revocations.from_crl(pki.load_crl(crl_path)).serials if crl_path.exists() else frozenset()
    now = dt.datetime.now(dt.timezone.utc)
    rows = [f"{'file':<24} {'name':<28} {'role':<8} {'expires':<10}  {'status':<8} serial"]
    for path in sorted(folder.glob("*.crt")):
        cert = pki.load_cert(path)
        role = "CA" if path.name == pki.CA_FILE else "server" if path.stem == pki.SERVER_NAME else "hospital"
        role = "admin" if pki.is_admin(cert) else role
        if cert.serial_number in revoked:
            status = "revoked"
        elif now > cert.not_valid_after_utc:
            status = "expired"
        elif role != "CA" and not pki.signed_by(cert, ca):
            status = "foreign"
        else:
            status = "valid"
        rows.append(
            f"{path.name:<24} {pki.common_name(cert):<28} {role:<8} {cert.not_valid_after_utc:%Y-%m-%d}  "
            f"{status:<8} {cert.serial_number:x}"
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="fed-certs",
        description="Make the federation's CA, the coordinator's certificate and one certificate per hospital; "
        "revoke and list them.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, days: int | None = None) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("--dir", type=Path, required=True, help="the folder that holds the federation's PKI")
        if days is not None:
            c.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")
            c.add_argument("--force", action="store_true", help="replace an existing key and certificate")
        return c

    command("init", "create the federation CA (ca.crt, ca.key) and an empty revocation list", pki.CA_DAYS).add_argument(
        "--name", default="medfed federation CA", help="the CA's common name"
    )
    command("server", "issue the coordinator's certificate (server.crt, server.key)", pki.LEAF_DAYS).add_argument(
        "--host", required=True, help="comma-separated DNS names and IP addresses hospitals connect to"
    )
    command("client", "issue a hospital's certificate (NAME.crt, NAME.key)", pki.LEAF_DAYS).add_argument(
        "--name", required=True, help="the hospital's name: its identity in the federation"
    )
    command("admin", "issue an operator's certificate for fed-admin (NAME.crt, NAME.key)", pki.LEAF_DAYS).add_argument(
        "--name", required=True, help="the operator's name, as the coordinator's log will show it"
    )
    command("revoke", "revoke a hospital's or an operator's certificate (adds it to crl.pem)").add_argument(
        "--name", required=True, help="the hospital (or operator) whose certificate to revoke"
    )
    command("list", "list the certificates in --dir with their status")
    return p


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    folder: Path = args.dir
    if args.command == "init":
        lines = init_ca(folder, args.name, args.days, args.force)
    elif args.command == "server":
        lines = issue_server(folder, [h.strip() for h in args.host.split(",") if h.strip()], args.days, args.force)
    elif args.command == "client":
        lines = issue_client(folder, args.name, args.days, args.force)
    elif args.command == "admin":
        lines = issue_admin(folder, args.name, args.days, args.force)
    elif args.command == "revoke":
        lines = revoke(folder, args.name)
    else:
        if not (folder / pki.CA_FILE).exists():
            raise ConfigError(f"--dir: {folder} has no {pki.CA_FILE}")
        lines = describe(folder)
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-certs", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
