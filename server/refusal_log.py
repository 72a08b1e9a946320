"""Refusals in the coordinator's log, a few per peer at a time.

A hostile or broken hospital can be refused thousands of times a minute (a join flood, a revoked
hospital's heartbeats); logging each would fill the disk and bury the lines that matter. So each peer
(its certificate's name, or its address without TLS) gets ``burst`` refusal lines per ``window``
seconds; the rest are counted and summed up in one line when the peer is next refused after the window.
Messages are already made safe by the code that raised them (medfed.common.peer_text); the peer's key
is quoted here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from medfed.common.peer_text import cleaned, quoted

BURST = 5
WINDOW_S = 60.0
MAX_PEERS = 10_000
"""peers remembered at once (the least recently refused are forgotten first)"""


@dataclass
class _Peer:
    window_start: float
    logged: int = 0
    suppressed: int = 0


class RefusalLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = BURST,
        window: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._burst, self._window, self._clock = logger, burst, window, clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._lock = threading.Lock()

    def refused(self, peer: str, what: str, reason: object) -> bool:
        """Log that ``peer``'s ``what`` (e.g. "join") was refused for ``reason``, unless this peer has had
        its share of lines; returns whether a line was written."""
        now = self._clock()
        with self._lock:
            state = self._peers.get(peer)
            if state is None or now - state.window_start > self._window:
                earlier = state.suppressed if state is not None else 0
                state = _Peer(now)
                if earlier:
                    self._log.warning(
                        "%d more refusals of %s were not logged in the last %.0f s", earlier, quoted(peer), self._window
                    )
            self._peers[peer] = state
            self._peers.move_to_end(peer)
            while len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
            if state.logged >= self._burst:
                state.suppressed += 1
                return False
            state.logged += 1
            last = state.logged == self._burst
        note = f" (more refusals of this peer in the next {self._window:.0f} s are counted, not logged)"
        self._log.warning("%s refused (%s): %s%s", what, quoted(peer), cleaned(reason), note if last else "")
        return True
