"""Walking an audit chain (``audit.jsonl``) and naming the first line that does not verify.

For every line, in order: it is a well-formed record in canonical form; it holds the hash of the line
before it; it belongs to the same federation; every certificate it carries matches its fingerprint; the
coordinator's signature verifies with a coordinator's certificate the CA issued; records follow each
other as a run does (start, then rounds one by one, a resume only from the last round recorded) and
each round starts from the model the previous one ended with; and every accepted update is signed by
the hospital it is credited to, with a hospital certificate the CA issued in its name, valid at the
time. A chain is signed throughout (a TLS run) or not at all (an --insecure run, which proves nothing
about who wrote it).

Without a CA (``ca=None``) signatures are checked against the certificates in the chain only, which
shows that nothing was altered since, not who signed; fed-audit asks for the CA.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509

from medfed.common.errors import MedfedError, ProvenanceError
from medfed.common.peer_text import quoted
from medfed.common.provenance.records import (
    RECORD_LABEL,
    AuditRecord,
    canonical,
    line_hash,
    parse_time,
    unsigned_bytes,
)
from medfed.common.provenance.signing import certificate_problem, fingerprint, load_pem, unb64, update_signed, verifies


@dataclass(frozen=True)
class Failure:
    line: int
    round: int | None
    problem: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (round {self.round})" if self.round is not None else "")
        return f"{where}: {self.problem}"


@dataclass
class Chain:
    """What a walk found: the records that verified, in order, and the first failure (if any)."""

    records: list[AuditRecord] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    """each verified line's hash (the next record's ``previous``)"""
    signed: bool = False
    failure: Failure | None = None

    @property
    def head(self) -> str | None:
        return self.hashes[-1] if self.hashes else None

    @property
    def model(self) -> str | None:
        """The global model's digest after the last record."""
        return self.records[-1].model if self.records else None

    def last_round(self, number: int) -> AuditRecord | None:
        """The record of round ``number`` that stands (a round done again after a restart: the last one)."""
        found = [r for r in self.records if r.kind == "round" and r.round == number]
        return found[-1] if found else None


class _Refused(MedfedError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Walk:
    def __init__(self, ca: x509.Certificate | None) -> None:
        self.ca = ca
        self.chain = Chain()
        self.known: dict[str, x509.Certificate] = {}
        self.federation: str | None = None
        self.model: str | None = None
        self.last_round: int | None = None

    def line(self, number: int, line: bytes) -> None:
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Refused("is not JSON (cut short by a crash, or edited)") from None
        if not isinstance(data, dict):
            raise _Refused("is not a JSON object")
        try:
            record = AuditRecord.from_json(data)
            in_form = canonical(data) == line
        except (ProvenanceError, ValueError, TypeError) as exc:
            raise _Refused(f"is not a record: {exc}") from None
        if not in_form:
            raise _Refused("is not in the chain's canonical form: it was edited")
        previous = self.chain.head
        if record.previous != previous:
            raise _Refused(
                "does not follow the line before it: a record was removed, inserted or reordered"
                if previous is not None
                else "names a record before it, but it is the first line"
            )
        if self.federation is not None and record.federation_id != self.federation:
            raise _Refused(f"is for federation {quoted(record.federation_id)}, not {quoted(self.federation)}")
        self.federation = record.federation_id
        self._certificates(record)
        self._coordinator_signature(number, record, data)
        self._sequence(number, record)
        self.chain.records.append(record)
        self.chain.hashes.append(line_hash(line))

    def _certificates(self, record: AuditRecord) -> None:
        for fp, text in record.certificates.items():
            certificate = load_pem(text)
            if certificate is None or fingerprint(certificate) != fp:
                raise _Refused(f"carries a certificate that is not the one its fingerprint {fp[:16]}… names")
            self.known[fp] = certificate

    def _coordinator_signature(self, number: int, record: AuditRecord, data: dict[str, object]) -> None:
        signed = record.signature is not None
        if number == 1:
            self.chain.signed = signed
        elif signed != self.chain.signed:
            raise _Refused("is signed, in a chain that is not" if signed else "is not signed, in a chain that is")
        if not signed:
            return
        certificate = self.known.get(record.coordinator or "")
        if certificate is None:
            raise _Refused("names a coordinator certificate that no record carries")
        at = parse_time(record.time)
        if at is None:
            raise _Refused(f"has no valid time ({record.time!r})")
        if self.ca is not None and (bad := certificate_problem(certificate, self.ca, "coordinator", at=at)):
            raise _Refused(f"is signed with a certificate that {bad}")
        signature = unb64(record.signature or "")
        if signature is None or not verifies(certificate, signature, RECORD_LABEL, unsigned_bytes(data)):
            raise _Refused("the coordinator's signature does not verify: the record was altered")

    def _sequence(self, number: int, record: AuditRecord) -> None:
        if record.kind == "start":
            if number != 1:
                raise _Refused("is a second start record")
            self.model, self.last_round = record.model, 0
            return
        if record.kind == "resume":
            if self.last_round is not None and record.round != self.last_round:
                raise _Refused(f"resumes after round {record.round}, but the chain's last round is {self.last_round}")
            if self.model is not None and record.model != self.model:
                raise _Refused(f"resumes from a model that is not the one the chain holds after round {record.round} "
                               "(the checkpoint was replaced)")  # fmt: skip
            self.model, self.last_round = record.model, record.round
            return
        if self.last_round is None:
            raise _Refused("is a round, but the chain has no start or resume record before it")
        if record.round != self.last_round + 1:
            raise _Refused(f"follows round {self.last_round}: a round is missing or out of order")
        if record.model_in != self.model:
            raise _Refused("sent a model that is not the one the chain holds after the round before")
        if record.failed is not None and record.model != record.model_in:
            raise _Refused("failed, yet its model is not the model it started from")
        self._contributions(record)
        self.model, self.last_round = record.model, record.round

    def _contributions(self, record: AuditRecord) -> None:
        at = parse_time(record.time)
        accepted = [c for c in record.contributions if c.accepted]
        if len({c.hospital for c in accepted}) != len(accepted):
            raise _Refused("credits a hospital with two accepted updates")
        for c in accepted:
            who = quoted(c.hospital)
            if c.update is None or len(c.update) != 64:
                raise _Refused(f"accepts an update from {who} without its digest")
            if not self.chain.signed:
                continue
            certificate = self.known.get(c.certificate or "")
            if c.signature is None or certificate is None:
                raise _Refused(f"accepts an update from {who} that is not signed with a certificate in the chain")
            if self.ca is not None and (bad := certificate_problem(certificate, self.ca, "hospital", name=c.hospital,
                                                                   at=at)):  # fmt: skip
                raise _Refused(f"accepts an update from {who} signed with a certificate that {bad}")
            signature = unb64(c.signature)
            try:
                digest = bytes.fromhex(c.update)
            except ValueError:
                raise _Refused(f"accepts an update from {who} whose digest is not hexadecimal") from None
            if signature is None or not update_signed(certificate, signature, digest):
                raise _Refused(f"{who}'s signature does not verify over the update digest credited to it")


def walk(lines: Sequence[bytes], ca: x509.Certificate | None) -> Chain:
    """Verify ``lines`` (the file's lines, without their newlines) in order, up to the first failure."""
    state = _Walk(ca)
    for number, line in enumerate(lines, 1):
        try:
            state.line(number, line)
        except _Refused as refused:
            state.chain.failure = Failure(number, _round_of(line), refused.problem)
            break
    return state.chain


ROUND_FIELD = re.compile(rb'"round":(\d{1,9})[,}]')


def _round_of(line: bytes) -> int | None:
    """The round a failing line is about, read even from a line that is no longer JSON."""
    found = ROUND_FIELD.search(line)
    return int(found.group(1)) if found else None
