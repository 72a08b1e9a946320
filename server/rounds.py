"""A round's lifecycle: what hospitals are told to do, the open round's bookkeeping, and its outcome.

No locking here: an ``OpenRound`` is changed only with the coordinator's condition held
(server/coordinator.py), which also notifies the waiters after a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from medfed.common.messages import ModelSpec, PrivacyReport, TrainSettings
from medfed.common.tensors import EncodedModel
from medfed.server.errors import DuplicateUpdate, PermissionDenied, Rejected, UploadInProgress
from medfed.server.strategy import Accumulator


@dataclass(frozen=True)
class Task:
    round: int
    total_rounds: int
    settings: TrainSettings
    model: ModelSpec
    payload: EncodedModel


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Finished:
    reason: str
    rounds_completed: int
    resumable: bool = False


Instruction = Task | Wait | Finished


MAX_REFUSALS_RECORDED = 4
"""refused updates of one hospital in one round that go into the audit chain (a hostile hospital retrying
must not grow it without bound; the rest are counted)"""


@dataclass(frozen=True)
class UpdateProof:
    """Who sent which bytes: the update's digest as received, the hospital's signature over it, and the
    certificate of the TLS connection that delivered it (None on an --insecure coordinator)."""

    digest: bytes | None
    signature: bytes = b""
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class Contribution:
    name: str
    num_examples: int
    metrics: dict[str, float]
    privacy: PrivacyReport | None = None
    nbytes: int = 0
    """the update's size on the wire (its tensor bytes)"""
    proof: UpdateProof | None = None


@dataclass(frozen=True)
class RefusedUpdate:
    """An update of a chosen hospital that the round refused, for the audit chain."""

    name: str
    num_examples: int
    reason: str
    proof: UpdateProof | None = None
    """None when it was refused from its header, before its bytes were read"""


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    contributions: list[Contribution]
    missing: list[str]
    accumulator: Accumulator
    bytes_sent: int = 0
    bytes_received: int = 0
    refused: list[RefusedUpdate] = field(default_factory=list)


@dataclass
class OpenRound:
    task: Task
    selected: set[str]
    accumulator: Accumulator
    min_fit: int
    enough: int | None = None
    """over-selection: the round closes at the first ``enough`` updates"""
    contributions: dict[str, Contribution] = field(default_factory=dict)
    receiving: set[str] = field(default_factory=set)
    bytes_sent: int = 0
    """model bytes handed out to hospitals this round (a hospital that fetches twice counts twice)"""
    refused: list[RefusedUpdate] = field(default_factory=list)

    def refuse(self, refusal: RefusedUpdate) -> None:
        """Note a refused update of a chosen hospital (at most MAX_REFUSALS_RECORDED each)."""
        if sum(r.name == refusal.name for r in self.refused) < MAX_REFUSALS_RECORDED:
            self.refused.append(refusal)

    @property
    def short(self) -> bool:
        """Fewer hospitals are chosen than the round needs (--min-fit)."""
        return len(self.selected) < self.min_fit

    def take_if_short(self, name: str) -> bool:
        """A round short of hospitals takes one that joins or comes back, at once; True if it did."""
        if name in self.selected or not self.short:
            return False
        self.selected.add(name)
        return True

    def owes_update(self, name: str) -> bool:
        """Chosen, and neither reported nor uploading: the round's task is for it."""
        return name in self.selected and name not in self.contributions and name not in self.receiving

    def not_reported(self) -> list[str]:
        """Chosen hospitals the round could stop waiting for: no update, and none on its way."""
        return sorted(self.selected - self.contributions.keys() - self.receiving)

    def drop(self, name: str) -> None:
        self.selected.discard(name)
        self.receiving.discard(name)

    @property
    def complete(self) -> bool:
        """Every chosen hospital reported and there are enough updates, or over-selection has its first
        ``enough``."""
        if self.enough is not None and len(self.contributions) >= self.enough:
            return True
        return not (self.selected - self.contributions.keys()) and len(self.contributions) >= self.min_fit

    def check_upload(self, name: str, round_number: int) -> None:
        """Refuse an upload this round cannot take, before any byte of it is read."""
        if self.task.round != round_number:
            raise Rejected(f"round {round_number} is not open: round {self.task.round} is")
        if name not in self.selected:
            raise PermissionDenied(f"{name} was not chosen for round {round_number}")
        if name in self.contributions:
            raise DuplicateUpdate(f"{name} already sent its update for round {round_number}")
        if name in self.receiving:
            raise UploadInProgress(f"an earlier upload of {name}'s update for round {round_number} is still open")

    def outcome(self) -> RoundOutcome:
        contributions = [self.contributions[n] for n in sorted(self.contributions)]
        missing = sorted(self.selected - self.contributions.keys())
        received = sum(c.nbytes for c in contributions)
        return RoundOutcome(self.task.round, contributions, missing, self.accumulator, self.bytes_sent, received,
                            list(self.refused))  # fmt: skip
