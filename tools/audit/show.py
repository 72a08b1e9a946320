"""fed-audit show: who contributed to which round, as a table and as a PNG grid of hospitals x rounds.

Each cell says what happened to a hospital in a round the chain records: its update accepted (with
its example count), refused (with the reason, below the table), chosen but silent (missing), or not
chosen. A round done again after a restart shows as it was done last.
"""

from __future__ import annotations

from pathlib import Path

from medfed.common.peer_text import cleaned, quoted
from medfed.common.provenance.chain import Chain
from medfed.common.provenance.records import AuditRecord

Cells = dict[tuple[str, int], str]


def rounds_of(chain: Chain) -> list[AuditRecord]:
    """Each round's standing record (the last of a round done twice), in round order."""
    last = {r.round: r for r in chain.records if r.kind == "round"}
    return [last[n] for n in sorted(last)]


def states(chain: Chain) -> tuple[list[str], list[int], Cells, dict[tuple[str, int], str]]:
    """Hospitals, rounds, each cell's state (server/report/plots.py STATE_COLOURS) and its text."""
    cells: Cells = {}
    texts: dict[tuple[str, int], str] = {}
    for record in rounds_of(chain):
        for name in record.missing:
            cells[name, record.round], texts[name, record.round] = "missing", "missing"
        for c in record.contributions:
            if c.accepted:
                cells[c.hospital, record.round], texts[c.hospital, record.round] = "accepted", f"ok {c.num_examples}"
            elif cells.get((c.hospital, record.round)) != "accepted":
                cells[c.hospital, record.round], texts[c.hospital, record.round] = "refused", "REFUSED"
    hospitals = sorted({name for name, _ in cells})
    return hospitals, [r.round for r in rounds_of(chain)], cells, texts


def table(chain: Chain) -> list[str]:
    hospitals, numbers, _, texts = states(chain)
    names = [cleaned(h, 24) for h in hospitals]
    width = max([9, *(len(n) + 1 for n in names)])
    lines = ["round " + "".join(n.rjust(width) for n in names) + "  model after the round"]
    for record in rounds_of(chain):
        row = "".join(texts.get((h, record.round), ".").rjust(width) for h in hospitals)
        outcome = f"FAILED: {cleaned(record.failed, 80)}" if record.failed else record.model[:16] + "…"
        lines.append(f"{record.round:5d} {row}  {outcome}")
    refusals = [(r.round, c) for r in rounds_of(chain) for c in r.contributions if not c.accepted]
    if refusals:
        lines.append("refused updates:")
        lines += [f"  round {n}: {quoted(c.hospital)}: {cleaned(c.reason or 'no reason given')}" for n, c in refusals]
    if not numbers:
        lines.append("(no round recorded yet)")
    return lines


def draw(chain: Chain, path: Path) -> None:
    from medfed.server.report import plots  # matplotlib only when a picture is asked for

    hospitals, numbers, cells, _ = states(chain)
    federation = chain.records[0].federation_id if chain.records else "?"
    plots.grid(path, f"Contributions to federation {cleaned(federation, 32)}", hospitals, numbers, cells)
