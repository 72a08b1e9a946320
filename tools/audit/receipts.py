"""fed-audit receipt: a hospital's receipts, each checked on its own (the coordinator's signature and
certificate, against the federation's CA) and, given the run folder, against the run's chain: the chain
must credit the receipt's update to the hospital in the receipt's round, and still hold the record the
receipt names as its chain head (a chain rewritten before that point does not).

The file is what a hospital keeps (``receipts-*.jsonl``: one sent update per line, with its receipt) or
a single receipt (one JSON object)."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509

from medfed.common.errors import ProvenanceError
from medfed.common.provenance.chain import Chain
from medfed.common.provenance.receipts import RECEIPT_FORMAT, Receipt, SentUpdate
from medfed.tools.audit.verify import AuditFileError


def read_receipts(path: Path) -> list[tuple[SentUpdate | None, Receipt | None]]:
    """Each line's sent update (None for a bare receipt) and its receipt (None when none was kept)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AuditFileError(f"cannot read {path}: {exc.strerror}") from None
    found: list[tuple[SentUpdate | None, Receipt | None]] = []
    for number, line in enumerate((line for line in text.splitlines() if line.strip()), 1):
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ProvenanceError("not a JSON object")
            if data.get("format") == RECEIPT_FORMAT:
                found.append((None, Receipt.from_json(data)))
            else:
                sent = SentUpdate.from_json(data)
                found.append((sent, sent.receipt))
        except (json.JSONDecodeError, ProvenanceError) as exc:
            raise AuditFileError(f"{path} line {number} is not a receipt or a sent update: {exc}") from None
    if not found:
        raise AuditFileError(f"{path} holds no receipt")
    return found


def check(sent: SentUpdate | None, receipt: Receipt | None, ca: x509.Certificate, chain: Chain | None) -> str | None:
    """Why this receipt proves nothing, or is not borne out by the chain (None: it holds)."""
    if receipt is None:
        return "no receipt was kept for it (the coordinator did not accept it, or gave none)"
    if sent is not None and (receipt.update, receipt.round, receipt.hospital) != (sent.update, sent.round,
                                                                                   sent.hospital):  # fmt: skip
        return "the receipt is for another update than the one the hospital sent"
    if (problem := receipt.problem(ca)) is not None:
        return problem
    if chain is None:
        return None
    if chain.records and receipt.federation_id != chain.records[0].federation_id:
        return "the receipt is for another federation than this run"
    for index, record in enumerate(chain.records):
        if record.kind != "round" or record.round != receipt.round:
            continue
        credited = any(c.accepted and c.hospital == receipt.hospital and c.update == receipt.update
                       for c in record.contributions)  # fmt: skip
        if credited:
            if receipt.chain_head is not None and receipt.chain_head not in chain.hashes[:index]:
                return (f"the chain credits the update in round {receipt.round}, but no longer holds the record "
                        "the receipt names as its head: it was rewritten before that round")  # fmt: skip
            if sent is not None and sent.received not in (record.model_in, record.task):
                return f"the hospital trained from another model than the chain says round {receipt.round} sent"
            return None
    restarts = [r for r in chain.records if r.kind == "resume" and r.round < receipt.round and r.dropped]
    redone = (f" (the coordinator restarted from its checkpoint of round {restarts[-1].round} and did the rounds "
              "after it again: the records of the first attempt were dropped)") if restarts else ""  # fmt: skip
    return (f"the coordinator signed this receipt, but the chain does not credit the update to the hospital in "
            f"round {receipt.round}{redone}")  # fmt: skip
