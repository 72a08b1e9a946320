"""The coordinator's side of the audit chain: ``OUT/audit.jsonl`` (common/provenance/records.py) and
the receipts it signs for accepted updates.

The driver appends one record when the run starts (its first model), one per round (before the round's
history line and checkpoint, as history is written) and one when a resumed run continues from its
checkpoint. Each record is signed with the coordinator's TLS key and chained to the one before it;
without TLS (--insecure) the chain is still written and linked, but unsigned.

On --resume the chain is cut back to the checkpoint's round (a round recorded but not checkpointed is
done again, as its history line is), checked (links and signatures, against the CA), and continued with
a ``resume`` record whose model must be the one the chain recorded for that round: a checkpoint that
was replaced, or a chain that was edited, stops the coordinator with the line at fault.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509

from medfed.common import files
from medfed.common.errors import ConfigError
from medfed.common.peer_text import cleaned
from medfed.common.provenance.chain import walk
from medfed.common.provenance.receipts import Receipt, issue_receipt
from medfed.common.provenance.records import RECORD_LABEL, AuditRecord, Contribution, json_safe, line_hash, now_iso
from medfed.common.provenance.signing import Signer, b64, fingerprint, pem
from medfed.server.rounds import RoundOutcome, UpdateProof

log = logging.getLogger("medfed.server")


class AuditLog:
    def __init__(self, path: Path, federation_id: str, signer: Signer | None = None,
                 ca: x509.Certificate | None = None) -> None:  # fmt: skip
        """``signer``: the coordinator's certificate and key (None: an --insecure run, records unsigned);
        ``ca``: what a resumed chain's certificates are checked against."""
        self.path, self.federation_id = path, federation_id
        self._signer, self._ca = signer, ca
        self._lock = threading.Lock()
        self._head: str | None = None
        self._carried: set[str] = set()
        """fingerprints of the certificates the chain already carries"""
        self.records = 0

    @property
    def head(self) -> str | None:
        """The hash of the last record written (what the next one, and this round's receipts, name)."""
        return self._head

    @property
    def signed(self) -> bool:
        return self._signer is not None

    # ----- records -------------------------------------------------------------------------------

    def start(self, model: str, settings: Mapping[str, Any]) -> None:
        """A new chain: the run's first global model and the settings it trains with."""
        files.write_text(self.path, "", durable=True)
        self._head, self._carried, self.records = None, set(), 0
        self._append(AuditRecord("start", self.federation_id, 0, now_iso(), model, settings=json_safe(dict(settings))))

    def resume(self, completed: int, model: str) -> None:
        """Continue the chain after round ``completed``, whose checkpointed model has digest ``model``."""
        lines = self.path.read_bytes().split(b"\n") if self.path.exists() else []
        lines = [line for line in lines if line]
        kept = _cut(lines, completed, self.path)
        chain = walk(kept, self._ca)
        if chain.failure is not None:
            raise ConfigError(
                f"--resume: {self.path} {chain.failure}; move the file aside to start a new chain from this "
                "checkpoint (fed-audit verify tells more)"
            )
        if chain.records and chain.model != model:
            raise ConfigError(
                f"--resume: the checkpoint's model is not the model {self.path.name} recorded for round {completed} "
                "(was the checkpoint replaced?); move the file aside to start a new chain from this checkpoint"
            )
        if len(kept) < len(lines):
            files.write_bytes(self.path, b"".join(line + b"\n" for line in kept), durable=True)
        if not chain.records:
            files.write_text(self.path, "", durable=True)
            log.warning("%s holds no chain for this run: a new one starts at round %d", self.path, completed)
        self._head, self.records = chain.head, len(kept)
        self._carried = {fp for record in chain.records for fp in record.certificates}
        self._append(AuditRecord("resume", self.federation_id, completed, now_iso(), model,
                                 dropped=len(lines) - len(kept)))  # fmt: skip

    def round(
        self, outcome: RoundOutcome, *, model_in: str, model: str, task: str | None, strategy: Mapping[str, Any],
        secure: bool, failed: str | None,
    ) -> None:  # fmt: skip
        """Round ``outcome.round``: what was sent, who contributed what, and the model that came out."""
        certificates: dict[str, x509.Certificate] = {}
        contributions = [
            _contribution(c.name, True, c.num_examples, c.proof, None, certificates) for c in outcome.contributions
        ]
        contributions += [
            _contribution(r.name, False, r.num_examples, r.proof, r.reason, certificates) for r in outcome.refused
        ]
        record = AuditRecord(
            "round", self.federation_id, outcome.round, now_iso(), model, model_in=model_in,
            task=task if task != model_in else None, contributions=tuple(contributions), missing=tuple(outcome.missing),
            strategy=json_safe(dict(strategy)), secure=secure, failed=failed,
        )  # fmt: skip
        self._append(record, certificates)

    def _append(self, record: AuditRecord, certificates: Mapping[str, x509.Certificate] | None = None) -> None:
        carry = dict(certificates or {})
        if self._signer is not None:
            carry[self._signer.fingerprint] = self._signer.certificate
        new = {fp: pem(cert) for fp, cert in sorted(carry.items()) if fp not in self._carried}
        record = replace(
            record,
            certificates=new,
            previous=self._head,
            coordinator=self._signer.fingerprint if self._signer else None,
        )
        if self._signer is not None:
            record = replace(record, signature=b64(self._signer.sign(RECORD_LABEL, record.signed_bytes())))
        line = record.line()
        with self._lock, open(self.path, "ab") as f:
            f.write(line + b"\n")
            files.fsync_file(f)
            self._head = line_hash(line)
            self._carried |= new.keys()
            self.records += 1

    # ----- receipts ------------------------------------------------------------------------------

    def receipt(self, hospital: str, round_number: int, update: bytes, num_examples: int) -> Receipt | None:
        if self._signer is None:
            return None
        return issue_receipt(
            self._signer, federation_id=self.federation_id, round_number=round_number, hospital=hospital,
            update=update, num_examples=num_examples, chain_head=self._head,
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """For model.json: where the chain is and its head, which the final model is the last record of."""
        return {"file": self.path.name, "records": self.records, "head": self._head, "signed": self.signed}


def _contribution(
    name: str, accepted: bool, num_examples: int, proof: UpdateProof | None, reason: str | None,
    certificates: dict[str, x509.Certificate],
) -> Contribution:  # fmt: skip
    fp = None
    if proof is not None and proof.certificate is not None:
        fp = fingerprint(proof.certificate)
        certificates[fp] = proof.certificate
    digest = proof.digest.hex() if proof is not None and proof.digest is not None else None
    signature = b64(proof.signature) if proof is not None and proof.signature else None
    return Contribution(name, accepted, num_examples, digest, signature, fp,
                        cleaned(reason, 512) if reason is not None else None)  # fmt: skip


def _cut(lines: Sequence[bytes], completed: int, path: Path) -> list[bytes]:
    """The lines up to round ``completed``'s record (the last one of that round); what a crash left after
    it is a round the resumed run does again."""
    last = None
    for index, line in enumerate(lines):
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if index == len(lines) - 1:
                break  # the write a crash interrupted
            raise ConfigError(f"--resume: {path} line {index + 1} is not JSON; fed-audit verify tells more") from None
        if isinstance(data, dict) and data.get("kind") in ("start", "round") and data.get("round") == completed:
            last = index
    if last is None:
        if lines:
            raise ConfigError(
                f"--resume: {path} has no record of round {completed}, which the checkpoint says is done (was it "
                "cut short or replaced?); move the file aside to start a new chain from this checkpoint"
            )
        return []
    return list(lines[: last + 1])
