"""Usage errors are one line: what is wrong, the flag that was meant, where the help is."""

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
