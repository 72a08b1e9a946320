"""Usage errors are one line: what is wrong, the flag that was meant, where the help is."""

import subprocess
import sys

import pytest

from medfed.client.app import build_parser as client_parser
from medfed.server.app import build_parser as server_parser


def usage_error(parser_args: list[str], capsys: pytest.CaptureFixture[str], build=server_parser) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        build().parse_args(parser_args)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_a_mistyped_flag_is_one_line_with_the_flag_meant(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["--adress", "0.0.0.0:8443"], capsys)

    assert err == (
        "fed-server: error: unrecognized arguments: --adress 0.0.0.0:8443 (did you mean --address?); "
        "see fed-server --help\n"
    )


def test_a_bad_value_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["--data", "d", "--threads", "many"], capsys, build=client_parser)

    assert err.count("\n") == 1 and err.startswith("fed-client: error: argument --threads: invalid int value")


def test_output_into_a_reader_that_went_away_ends_quietly_with_141() -> None:
    """``fed-audit show RUN | head -1``: the reader closes the pipe; no traceback, no 'internal error'."""
    code = (
        "import sys\n"
        "from medfed.common.cli import run_command\n"
        "sys.exit(run_command('fed-x', lambda argv: [print('row ' * 50) for _ in range(100_000)] and 0))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.read(100)
    child.stdout.close()
    assert child.wait(timeout=60) == 141
    assert child.stderr.read() == b""
