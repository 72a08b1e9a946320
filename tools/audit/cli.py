"""fed-audit: verify a run's audit chain, show who contributed what, check a hospital's receipts.

Exit status: 0 when everything checked holds, 1 when something does not (the first place is named),
2 for bad input (a missing file, a flag).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from medfed.common.cli import CliError, Parser, run_command, setup_logging
from medfed.common.errors import ConfigError
from medfed.common.pki import load_cert
from medfed.tools.audit import receipts, show
from medfed.tools.audit.verify import AuditFileError, load_chain, verify_run

EXAMPLES = """
examples:
  fed-audit verify fed-out --ca pki/ca.crt
  fed-audit show fed-out                    (the table, and fed-out/contributions.png)
  fed-audit receipt hospital_a/medfed-state/receipts-1f2e3d4c5b6a7980.jsonl --run fed-out --ca pki/ca.crt
"""
GRID_FILE = "contributions.png"


def build_parser() -> Parser:
    p = Parser(
        prog="fed-audit", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--verbose", action="store_true", help="log debug output and show tracebacks")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    verify = commands.add_parser("verify", help="check a run folder against its audit chain and the federation's CA")
    verify.add_argument("run", type=Path, help="the run folder (fed-server --out)")
    verify.add_argument("--ca", type=Path, help="the federation's CA certificate (needed for a signed chain)")
    verify.add_argument("--allow-unsigned", action="store_true",
                        help="check an --insecure run's unsigned chain instead of failing on it")  # fmt: skip
    shown = commands.add_parser("show", help="print who contributed to which round and draw it as a PNG grid")
    shown.add_argument("run", type=Path, help="the run folder (fed-server --out)")
    shown.add_argument("--png", type=Path, help=f"where the grid goes (default RUN/{GRID_FILE})")
    receipt = commands.add_parser("receipt", help="check a hospital's receipts, and against a run with --run")
    receipt.add_argument("file", type=Path, help="a hospital's receipts-*.jsonl (in its state folder) or one receipt")
    receipt.add_argument("--ca", type=Path, required=True, help="the federation's CA certificate")
    receipt.add_argument("--run", type=Path, help="the run folder whose chain must credit each receipt's update")
    return p


def _ca(path: Path | None) -> x509.Certificate | None:
    return load_cert(path) if path is not None else None


def _verify(args: argparse.Namespace) -> int:
    ca = _ca(args.ca)
    if ca is None and not args.allow_unsigned and load_chain(args.run, None).signed:
        raise ConfigError("the chain is signed: give the federation's CA with --ca to check who signed it")
    verdict = verify_run(args.run, ca, allow_unsigned=args.allow_unsigned)
    for line in verdict.held:
        print(f"ok   {line}")
    if verdict.failure is not None:
        print(f"FAIL {verdict.failure}")
        return 1
    print(f"verified: {args.run}")
    return 0


def _show(args: argparse.Namespace) -> int:
    chain = load_chain(args.run, None)
    print("\n".join(show.table(chain)))
    if chain.failure is not None:
        print(f"warning: the chain stops verifying at audit.jsonl {chain.failure}; fed-audit verify tells more")
    png = args.png or args.run / GRID_FILE
    try:
        show.draw(chain, png)
    except OSError as exc:
        raise CliError(f"cannot write {png}: {exc.strerror} (choose another place with --png)") from None
    print(f"grid: {png}")
    return 0 if chain.failure is None else 1


def _receipt(args: argparse.Namespace) -> int:
    ca = load_cert(args.ca)
    chain = load_chain(args.run, ca) if args.run is not None else None
    if chain is not None and chain.failure is not None:
        print(f"FAIL the run's audit.jsonl {chain.failure}; fed-audit verify tells more")
        return 1
    failed = 0
    for sent, kept in receipts.read_receipts(args.file):
        number = kept.round if kept is not None else sent.round if sent is not None else "?"
        problem = receipts.check(sent, kept, ca, chain)
        failed += problem is not None
        where = " and credited in the run's chain" if chain is not None else ""
        print(
            f"FAIL round {number}: {problem}" if problem else f"ok   round {number}: signed by the coordinator{where}"
        )
    return 1 if failed else 0


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return {"verify": _verify, "show": _show, "receipt": _receipt}[args.command](args)
    except AuditFileError as exc:
        raise ConfigError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fed-audit", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
