"""What the secure-aggregation stages exchange, as typed values both roles share (the wire's encoding of
them is a later layer). A round runs four stages after the task:

1. every chosen hospital advertises its signed ``PublicKeys``;
2. the coordinator relays them all; each hospital checks its neighbours' and sends each neighbour a
   sealed ``ShareBundle`` (Shamir shares of its self-mask seed and of its mask key);
3. the coordinator hands each hospital the bundles addressed to it; each sends its masked vector;
4. the coordinator names who it has a masked vector from (``survivors``) and who dropped after
   sharing (``dropped``); each survivor ``Reveals`` the self-seed shares it holds for survivors and the
   mask-key shares it holds for dropped hospitals, never both for one peer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from medfed.common.errors import SecureAggregationError
from medfed.common.secagg import graph
from medfed.common.secagg.fixed_point import FixedPoint


@dataclass(frozen=True)
class Parameters:
    """What a task says of its secure aggregation (the federation and round come with the session and
    the task, and complete it into a ``Setup``)."""

    participants: tuple[tuple[str, int], ...]
    threshold: int
    graph_seed: bytes
    clip: float
    length: int

    def for_round(self, federation: str, round_number: int) -> Setup:
        return Setup(federation, round_number, self.participants, self.threshold, self.graph_seed, self.clip,
                     self.length)  # fmt: skip


@dataclass(frozen=True)
class Setup:
    """The round's public parameters, sent with its task."""

    federation: str
    round: int
    participants: tuple[tuple[str, int], ...]
    """(name, training examples declared at join), sorted by name: the weights and the share indices"""
    threshold: int
    """shares that rebuild a secret, counted in each hospital's neighbourhood (itself included)"""
    graph_seed: bytes
    clip: float
    length: int
    """coordinates in the masked vector (the model's floating-point values)"""

    def __post_init__(self) -> None:
        names = [n for n, _ in self.participants]
        if names != sorted(set(names)) or any(count < 1 for _, count in self.participants):
            raise SecureAggregationError("the round's hospitals must be distinct, sorted, with positive counts")
        smallest = min(len(self.neighbours(n)) for n in names) + 1 if names else 0
        if not 2 <= self.threshold <= smallest:
            raise SecureAggregationError(
                f"threshold {self.threshold} must be at least 2 and at most the smallest neighbourhood ({smallest})"
            )

    @property
    def parameters(self) -> Parameters:
        return Parameters(self.participants, self.threshold, self.graph_seed, self.clip, self.length)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.participants)

    def index(self, name: str) -> int:
        """The hospital's Shamir x-coordinate (1-based)."""
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise SecureAggregationError(f"{name} is not a hospital of this round") from None

    def weight(self, name: str) -> float:
        total = sum(count for _, count in self.participants)
        return dict(self.participants)[name] / total

    @cached_property
    def _graph(self) -> dict[str, frozenset[str]]:
        return graph.neighbours(self.names, self.graph_seed)

    def neighbours(self, name: str) -> frozenset[str]:
        if name not in self._graph:
            raise SecureAggregationError(f"{name} is not a hospital of this round")
        return self._graph[name]

    @property
    def fixed_point(self) -> FixedPoint:
        return FixedPoint(self.clip, len(self.participants))

    @property
    def label(self) -> bytes:
        return f"{self.federation}/{self.round}".encode()


def default_threshold(neighbourhood: int) -> int:
    """More than two thirds of a neighbourhood (the hospital and its neighbours), and at least 2: the
    fraction Bonawitz et al. give for a coordinator that may lie about who dropped."""
    return max(2, (2 * neighbourhood) // 3 + 1) if neighbourhood > 2 else neighbourhood


@dataclass(frozen=True)
class ShareBundle:
    sender: str
    recipient: str
    sealed: bytes
    """AES-GCM under the pair's cipher key: the sender's self-seed share and mask-key share for the recipient"""


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class Reveal:
    sender: str
    self_shares: Mapping[str, bytes] = field(default_factory=dict)
    """survivor -> the share of its self-mask seed this hospital holds"""
    key_shares: Mapping[str, bytes] = field(default_factory=dict)
    """dropped hospital -> the share of its mask key this hospital holds"""
