"""Why the coordinator refuses a call. The servicer maps each class to one gRPC status code; the
message always says what was wrong, so a hospital's operator can act on it."""

from __future__ import annotations

from medfed.common.errors import MedfedError


class CoordinatorError(MedfedError):
    """A refused call; nothing in the federation's state changed."""


class Unauthenticated(CoordinatorError):
    """No valid identity: an unknown session, or a session used by another hospital. (UNAUTHENTICATED)"""


class UnknownSession(Unauthenticated):
    """The coordinator does not know this session (it restarted, or the hospital never joined)."""


class PermissionDenied(CoordinatorError):
    """A known caller that may not do this: not on --allow, revoked, or not chosen for the round."""


class SessionReplaced(CoordinatorError):
    """The same hospital joined again from another process; this session is over. (ABORTED)"""


class Rejected(CoordinatorError):
    """Well-formed, but not now: a round that is not open, incompatible data, a finished federation.
    (FAILED_PRECONDITION)"""


class InvalidUpdate(CoordinatorError):
    """An update that can never be accepted: wrong tensors, NaN, a bad sample count. (INVALID_ARGUMENT)"""


class TooLarge(CoordinatorError):
    """More than the coordinator accepts. (RESOURCE_EXHAUSTED)"""


class DuplicateUpdate(CoordinatorError):
    """This hospital's update for this round already arrived (or is arriving). (ALREADY_EXISTS)"""


class UploadInProgress(CoordinatorError):
    """An earlier upload of this hospital's update is still being received (a retry after a cut
    connection can overtake the coordinator noticing the cut): retry shortly. (UNAVAILABLE)"""


class InvalidRequest(CoordinatorError):
    """An operator's command that cannot be carried out as given (fed-admin extend to a past round).
    (INVALID_ARGUMENT)"""


class NotFound(CoordinatorError):
    """An operator's command about a hospital the federation does not know. (NOT_FOUND)"""
