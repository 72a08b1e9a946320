"""Text from a peer reaches logs and status messages cut, escaped and, when repeated, rate-limited."""

import logging

import pytest

from medfed.common.peer_text import cleaned, listed, quoted
from medfed.server.refusal_log import RefusalLog


def test_a_long_name_is_cut_and_says_how_long_it_was() -> None:
    shown = quoted("x" * 10_000)

    assert shown == "'" + "x" * 64 + "…' (10000 characters)"
    assert quoted("hospital_a") == "'hospital_a'"


def test_control_characters_cannot_forge_log_lines_or_move_the_terminal() -> None:
    forged = "a\n12:00:00 INFO    medfed.server: hospital_x joined\x1b[2J"

    for shown in (quoted(forged, limit=200), cleaned(forged)):
        assert "\n" not in shown and "\x1b" not in shown
        assert "\\n" in shown and "\\x1b" in shown


def test_a_list_of_a_thousand_class_names_shows_ten() -> None:
    shown = listed(tuple(f"class_{i}" * 20 for i in range(1000)))

    assert shown.count("'class_") == 10 and shown.endswith(", … (1000 in all)]") and len(shown) < 1200


def test_repeated_refusals_of_one_peer_are_logged_a_few_times_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=3, window=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.refusals")

    written = [refusals.refused("ipv4:10.0.0.9", "join", "name too long") for _ in range(20)]
    other = refusals.refused("hospital_b", "heartbeat", "revoked")
    now[0] = 61.0
    refusals.refused("ipv4:10.0.0.9", "join", "name too long")

    assert written == [True] * 3 + [False] * 17 and other
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6
    assert "17 more refusals of 'ipv4:10.0.0.9' were not logged in the last 60 s" in lines[4]
    assert "counted, not logged" in lines[2]
