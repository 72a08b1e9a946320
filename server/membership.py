"""Who is in the federation: hospitals, their sessions and whether each is still there.

A hospital's presence is one state, not three flags: it can be ``ACTIVE``, ``SILENT`` (no call for
--heartbeat-timeout: taken for gone, and back at its next call), ``LEFT`` (said goodbye, or its session
was ended when its certificate was revoked) or ``TOLD`` (it heard that the federation is over).

No locking here: every method is called with the coordinator's condition held (server/coordinator.py),
which also notifies the waiters after a change.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from medfed.common.data.folders import DatasetInfo
from medfed.common.limits import HOSPITAL_NAME
from medfed.common.peer_text import listed, quoted
from medfed.server.errors import (
    CoordinatorError,
    InvalidUpdate,
    PermissionDenied,
    Rejected,
    SessionReplaced,
    Unauthenticated,
    UnknownSession,
)

log = logging.getLogger("medfed.server")

MAX_CLOSED_SESSIONS = 10_000
"""ended sessions remembered, to tell a caller why (beyond that: 'unknown session')"""


class Presence(enum.Enum):
    ACTIVE = "active"
    SILENT = "silent"
    """taken for gone after --heartbeat-timeout without a call; any call brings it back"""
    LEFT = "left"
    """said goodbye, or its session was ended (revoked)"""
    TOLD = "told"
    """heard that the federation is over"""


@dataclass
class Hospital:
    name: str
    session_id: str
    num_examples: int
    presence: Presence = Presence.ACTIVE
    last_seen: float = 0.0
    classes: tuple[int, ...] = ()
    """the classes in its training data, as it reported them (for the report only)"""
    polls: int = 0
    """polls started; a poll that sees a newer one return at once (one waiting poll per hospital)"""

    @property
    def present(self) -> bool:
        """Counted as part of the federation (chosen for rounds, waited for at the end)."""
        return self.presence in (Presence.ACTIVE, Presence.TOLD)


class Membership:
    def __init__(
        self,
        data_info: DatasetInfo | None,
        *,
        allowed: frozenset[str] | None,
        max_examples: int,
        clock: Callable[[], float],
    ) -> None:
        self.info = data_info
        """the federation's data: from the coordinator's test set, else from the first hospital to join"""
        self._allowed = allowed
        self._max_examples = max_examples
        self._clock = clock
        self.hospitals: dict[str, Hospital] = {}
        self._sessions: dict[str, str] = {}
        self._closed: dict[str, CoordinatorError] = {}
        self.removed: dict[str, str] = {}
        """hospitals the operator removed (fed-admin remove) -> why: refused from then on"""
        """ended session -> what its next call is told (insertion order: the oldest are forgotten first)"""

    def check_request(self, name: str, num_examples: int) -> None:
        """What a join can be refused for without looking at the federation."""
        if not HOSPITAL_NAME.match(name):
            raise InvalidUpdate(f"hospital name {quoted(name)} must be 1-64 letters, digits, '_', '.' or '-'")
        if (why := self.removed.get(name)) is not None:
            raise PermissionDenied(f"{name} was removed from this federation ({why})")
        if self._allowed is not None and name not in self._allowed:
            raise PermissionDenied(f"{name} is not on this federation's --allow list")
        if not 1 <= num_examples <= self._max_examples:
            raise InvalidUpdate(
                f"{name} declares {num_examples} training examples; allowed are 1..{self._max_examples}"
            )

    def admit(self, name: str, num_examples: int, info: DatasetInfo, classes: tuple[int, ...]) -> Hospital:
        """A new session for ``name``; one it had before is closed."""
        if self.info is None:
            self.info = info
            log.info(
                "%s set the federation's data: %s, classes %s", name, quoted(info.dataset), listed(info.class_names)
            )
        elif reason := self.info.mismatch(info):
            raise Rejected(f"{name} cannot join: its {reason}")
        known = self.info.num_classes
        if len(set(classes)) != len(classes) or any(not 0 <= c < known for c in classes):
            raise InvalidUpdate(f"{name} reports classes {list(classes)[:10]}: expected distinct 0..{known - 1}")
        old = self.hospitals.get(name)
        if old is not None:
            replaced = SessionReplaced("this hospital joined again from another process; this session is closed")
            self.close_session(old.session_id, replaced)
            if old.present:
                log.warning("%s joined again; its previous session is closed", name)
        session_id = secrets.token_urlsafe(18)
        hospital = Hospital(name, session_id, num_examples, last_seen=self._clock(), classes=tuple(sorted(classes)))
        self.hospitals[name] = hospital
        self._sessions[session_id] = name
        return hospital

    def close_session(self, session_id: str, error: CoordinatorError) -> None:
        """End a session; its next call (or waiting poll) gets ``error``."""
        self._sessions.pop(session_id, None)
        self._closed[session_id] = error
        while len(self._closed) > MAX_CLOSED_SESSIONS:
            del self._closed[next(iter(self._closed))]

    def caller(self, session_id: str, caller: str | None) -> tuple[Hospital, bool]:
        """The hospital calling, seen now, and whether this call ended a silence. ``caller`` is the TLS
        identity, None without TLS."""
        if (closed := self._closed.get(session_id)) is not None:
            raise closed
        name = self._sessions.get(session_id)
        if name is None:
            raise UnknownSession("unknown session: join first")
        if caller is not None and caller != name:
            raise Unauthenticated(f"this session belongs to another hospital, not {caller}")
        hospital = self.hospitals[name]
        hospital.last_seen = self._clock()
        back = hospital.presence is Presence.SILENT
        if back:
            hospital.presence = Presence.ACTIVE
            log.info("%s is back after a silence", name)
        return hospital, back

    def live(self, name: str) -> Hospital | None:
        """``name``'s hospital while its session is open."""
        hospital = self.hospitals.get(name)
        return hospital if hospital is not None and hospital.session_id in self._sessions else None

    def name_of(self, session_id: str) -> str | None:
        return self._sessions.get(session_id)

    def session_error(self, session_id: str) -> CoordinatorError | None:
        return self._closed.get(session_id)

    def present(self) -> list[str]:
        return sorted(h.name for h in self.hospitals.values() if h.present)

    def untold(self) -> list[str]:
        """Present hospitals that have not yet heard that the federation is over."""
        return sorted(h.name for h in self.hospitals.values() if h.presence is Presence.ACTIVE)

    def classes(self) -> dict[str, tuple[int, ...]]:
        return {h.name: h.classes for h in self.hospitals.values() if h.classes}
