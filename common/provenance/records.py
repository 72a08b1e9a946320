"""The audit chain's records: ``audit.jsonl`` in a run folder, one canonical JSON object per line.

Three kinds: ``start`` (the first global model, before round 1), ``round`` (the model sent, every
contribution accepted or refused, the strategy and the model that came out) and ``resume`` (a restarted
coordinator continues from its checkpoint's model). Each record holds the hash of the line before it,
so removing, inserting or reordering a record breaks the chain, and the coordinator signs each one
with its TLS key, so nobody without that key can write one. A certificate's PEM appears in the first
record that names it, so the file alone is enough to verify the signatures against the federation's
CA.

Canonical JSON (sorted keys, no spaces, ASCII) makes a record's bytes a function of its content: the
signature covers the record without its ``signature`` field, and a line that is not in canonical form
was edited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from medfed.common.errors import ProvenanceError

FORMAT = "medfed-audit/1"
RECORD_LABEL = b"medfed/audit-record/v1"
Kind = Literal["start", "round", "resume"]
KINDS: tuple[str, ...] = get_args(Kind)


def canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def line_hash(line: bytes) -> str:
    """What the next record's ``previous`` holds: hex SHA-256 of this line's bytes (without its newline)."""
    return hashlib.sha256(line).hexdigest()


def json_safe(value: Any) -> Any:
    """Settings as JSON can hold them: a float that is not finite becomes its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class Contribution:
    """One update for a round, as the coordinator judged it."""

    hospital: str
    accepted: bool
    num_examples: int
    update: str | None = None
    """hex digest of the update as sent (None: refused before its bytes were read)"""
    signature: str | None = None
    """the hospital's signature over ``update`` (base64), None on an --insecure coordinator"""
    certificate: str | None = None
    """fingerprint of the certificate of the connection that delivered it"""
    reason: str | None = None
    """why it was refused"""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hospital": self.hospital, "accepted": self.accepted, "num_examples": self.num_examples,
            "update": self.update, "signature": self.signature, "certificate": self.certificate,
        }  # fmt: skip
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Contribution:
        return cls(
            hospital=required(data, "hospital", str), accepted=required(data, "accepted", bool),
            num_examples=required(data, "num_examples", int), update=optional(data, "update", str),
            signature=optional(data, "signature", str), certificate=optional(data, "certificate", str),
            reason=optional(data, "reason", str),
        )  # fmt: skip


@dataclass(frozen=True)
class AuditRecord:
    kind: Kind
    federation_id: str
    round: int
    """start: 0; round: its number; resume: the checkpoint's round"""
    time: str
    model: str
    """hex model digest: the first model (start), the checkpoint's (resume), the global model after the round"""
    model_in: str | None = None
    """round: the global model sent to the hospitals"""
    task: str | None = None
    """round: the digest of everything the task carried, when it held more than the model (SCAFFOLD's control)"""
    contributions: tuple[Contribution, ...] = ()
    missing: tuple[str, ...] = ()
    """round: hospitals chosen for it that sent no update"""
    strategy: dict[str, Any] | None = None
    secure: bool = False
    """round: summed under secure aggregation (the update digests are of the masked vectors)"""
    failed: str | None = None
    """round: why its aggregate was not adopted (``model`` is then ``model_in``)"""
    settings: dict[str, Any] | None = None
    """start: the training settings the run was started with"""
    dropped: int = 0
    """resume: records of rounds after the checkpoint that the resumed run does again"""
    coordinator: str | None = None
    """fingerprint of the certificate whose key signed this record (None: an --insecure run, unsigned)"""
    certificates: dict[str, str] = field(default_factory=dict)
    """fingerprint -> PEM, for certificates no earlier record carried"""
    previous: str | None = None
    signature: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT, "kind": self.kind, "federation_id": self.federation_id, "round": self.round,
            "time": self.time, "model": self.model, "coordinator": self.coordinator,
            "certificates": dict(self.certificates), "previous": self.previous, "signature": self.signature,
        }  # fmt: skip
        if self.kind == "round":
            out.update(
                model_in=self.model_in, contributions=[c.to_json() for c in self.contributions],
                missing=list(self.missing), strategy=self.strategy, secure=self.secure, failed=self.failed,
            )  # fmt: skip
            if self.task is not None:
                out["task"] = self.task
        elif self.kind == "start":
            out["settings"] = self.settings or {}
        else:
            out["dropped"] = self.dropped
        return out

    def signed_bytes(self) -> bytes:
        """What the coordinator signs: the record's canonical JSON without its signature."""
        return unsigned_bytes(self.to_json())

    def line(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditRecord:
        if data.get("format") != FORMAT:
            raise ProvenanceError(f"format {data.get('format')!r} is not {FORMAT!r}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ProvenanceError(f"unknown kind {kind!r}")
        certificates = data.get("certificates")
        if not isinstance(certificates, dict) or not all(isinstance(v, str) for v in certificates.values()):
            raise ProvenanceError("'certificates' is not an object of PEM texts")
        contributions = data.get("contributions", [])
        if not isinstance(contributions, list) or not all(isinstance(c, dict) for c in contributions):
            raise ProvenanceError("'contributions' is not a list of objects")
        missing = data.get("missing", [])
        if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
            raise ProvenanceError("'missing' is not a list of names")
        return cls(
            kind=kind, federation_id=required(data, "federation_id", str), round=required(data, "round", int),
            time=required(data, "time", str), model=required(data, "model", str),
            model_in=optional(data, "model_in", str), task=optional(data, "task", str),
            contributions=tuple(Contribution.from_json(c) for c in contributions), missing=tuple(missing),
            strategy=optional(data, "strategy", dict), secure=bool(data.get("secure", False)),
            failed=optional(data, "failed", str), settings=optional(data, "settings", dict),
            dropped=int(data.get("dropped", 0)), coordinator=optional(data, "coordinator", str),
            certificates=dict(certificates), previous=optional(data, "previous", str),
            signature=optional(data, "signature", str),
        )  # fmt: skip


def parse_time(text: str) -> dt.datetime | None:
    """A record's or receipt's time (ISO 8601 with its zone), or None when it is not one."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def unsigned_bytes(data: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in data.items() if k != "signature"})


def required(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProvenanceError(f"{key!r} is missing or not a {kind.__name__}")
    return value


def optional(data: Mapping[str, Any], key: str, kind: type) -> Any:
    return None if data.get(key) is None else required(data, key, kind)
