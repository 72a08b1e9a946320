"""Text that came from the other side (a hospital's name, a tensor or metric name, a reason, a status
message), made safe to put in a log line, a status message or a report.

A peer controls these strings, so quoted whole they could fill the coordinator's log (a 3 MiB name
once added 60 MB to it in 20 refused joins), forge log lines with newlines or terminal escapes, or
make a status message too long for a gRPC client to show. Every such string is shown through these
two functions: cut to a limit, with what was cut said, and with anything unprintable escaped.
"""

from __future__ import annotations

NAME_LIMIT = 64
"""characters of a name (hospital, tensor, metric, class) shown from a peer"""
TEXT_LIMIT = 256
"""characters of free text (a reason) shown from a peer"""
STATUS_LIMIT = 1024
"""characters of a gRPC status message, sent or shown (a default gRPC client may show only 'Stream removed'
for a much longer one)"""


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(value: object, limit: int = NAME_LIMIT) -> str:
    """``value`` as a quoted, escaped name of at most ``limit`` characters: ``'abc'``, or
    ``'abc…' (10302 characters)`` when it was longer."""
    text = value if isinstance(value, str) else str(value)
    shown = _escaped(text[:limit])
    if len(text) > limit:
        return f"'{shown}…' ({len(text)} characters)"
    return f"'{shown}'"


def cleaned(value: object, limit: int = TEXT_LIMIT) -> str:
    """Free text, unquoted: escaped, and cut to ``limit`` characters with a note of how long it was."""
    text = value if isinstance(value, str) else str(value)
    shown = _escaped(text[:limit])
    if len(text) > limit:
        return f"{shown}… ({len(text)} characters)"
    return shown


def listed(values: object, limit: int = 10) -> str:
    """A peer's list of names (class names, say): at most ``limit`` of them, each quoted."""
    items = list(values) if isinstance(values, list | tuple | set | frozenset) else [values]
    shown = ", ".join(quoted(v) for v in items[:limit])
    more = f", … ({len(items)} in all)" if len(items) > limit else ""
    return f"[{shown}{more}]"
