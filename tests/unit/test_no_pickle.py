"""Nothing that came over the network or from a user's file may be unpickled: scan our own sources."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("server", "client", "common", "protos", "bench") for p in (ROOT / d).rglob("*.py")]
FORBIDDEN = [
    re.compile(r"\bimport pickle\b|\bpickle\.loads?\("),
    re.compile(r"allow_pickle\s*=\s*True"),
    re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
]


def test_sources_never_unpickle() -> None:
    assert len(SOURCES) > 10
    offending = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in SOURCES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(p.search(line) for p in FORBIDDEN)
    ]
    assert offending == []
