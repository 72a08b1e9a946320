"""What a hospital's loop and its connection to the coordinator exchange, with no gRPC in it: the
``Connection`` interface the loop runs over (client/connection.py implements it over gRPC; tests
script it), and the outcomes a call can have, as plain values and exceptions.

A connection retries what is worth retrying (an unreachable coordinator, for up to --max-wait) and
turns everything else into one of these: a final ``NodeError``, a ``SessionLost`` the loop answers by
joining again, a ``CoordinatorAway`` while a stopped coordinator is awaited, or a ``SubmitOutcome``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from medfed.common.data.folders import DatasetInfo
from medfed.common.errors import MedfedError
from medfed.common.messages import FinishedNotice, ReceivedTask, UpdateHeader
from medfed.common.provenance.receipts import Receipt
from medfed.common.secagg.keys import PublicKeys
from medfed.common.secagg.messages import Reveal, ShareBundle, UnmaskRequest
from medfed.common.tensors import EncodedModel


class NodeError(MedfedError):
    """Why this hospital has to stop; the message says what to fix."""


class SessionLost(MedfedError):
    """The coordinator no longer knows this session (it restarted without a checkpoint): join again."""


class RoundAbandoned(MedfedError):
    """The coordinator gave up the round under way (a secure round left with too few hospitals): this
    hospital skips it and waits for the next task."""


class CoordinatorAway(MedfedError):
    """One attempt found the coordinator down or still stopping: worth trying again shortly."""


@dataclass(frozen=True)
class JoinInfo:
    name: str
    num_examples: int
    data: DatasetInfo
    classes: tuple[int, ...]
    """the classes of its training data, or () when the hospital says nothing about its data (own DP)"""
    version: str


@dataclass(frozen=True)
class Session:
    id: str
    federation: str


class Submitted(Enum):
    ACCEPTED = "accepted"
    ALREADY_HAD = "already had"
    """a retried upload the coordinator had already counted: counted once"""
    DISCARDED = "discarded"
    """too late, or no longer chosen: the update is dropped and the hospital goes on"""


@dataclass(frozen=True)
class SubmitOutcome:
    kind: Submitted
    detail: str = ""
    receipt: Receipt | None = None
    """the coordinator's signed receipt for an accepted update (client/receipts.py keeps it)"""


class Connection(Protocol):
    def join(self, hospital: JoinInfo, *, retry: bool = True) -> Session:
        """Join (again). ``retry``: keep retrying an unreachable coordinator for --max-wait; without it,
        one attempt that raises CoordinatorAway when the coordinator is down or stopping."""
        ...

    def next_task(self, session: Session) -> ReceivedTask | FinishedNotice | None:
        """The next task with its model, the end, or None (nothing yet: poll again)."""
        ...

    def submit(self, header: UpdateHeader, model: EncodedModel) -> SubmitOutcome: ...

    def secure_keys(self, session: Session, round_number: int, keys: PublicKeys) -> list[PublicKeys]:
        """Secure aggregation's stage 1: this hospital's keys; returns every advertised key set."""
        ...

    def secure_shares(self, session: Session, round_number: int, bundles: list[ShareBundle]) -> list[ShareBundle]:
        """Stage 2: the bundles this hospital sends; returns those addressed to it."""
        ...

    def secure_await_unmask(self, session: Session, round_number: int) -> UnmaskRequest:
        """After the masked vector's upload: who the coordinator has vectors from, and who dropped."""
        ...

    def secure_confirm(self, session: Session, round_number: int, signature: bytes) -> dict[str, bytes]:
        """Stage 4a: this hospital's signature over the request; returns the survivors' signatures."""
        ...

    def secure_reveal(self, session: Session, round_number: int, reveal: Reveal) -> None:
        """Stage 4b: the shares this hospital reveals."""
        ...

    def heartbeat(self, session: Session) -> None:
        """A sign of life; never raises (a missed beat is not fatal: the next call tells what is wrong)."""
        ...

    def leave(self, session: Session, reason: str) -> None:
        """Tell the coordinator this hospital is going; never raises."""
        ...
