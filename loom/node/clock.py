"""The time a node stamps on its proposals (`Command.time_ms`), the only time apply sees.

Wall clocks jump (NTP steps, an operator, a VM restored from a snapshot); TTLs, session
expiry and lock leases must not. So a leader reads the wall clock once, when it takes office
(never earlier than the log's own clock, so time in the log never runs backwards), and from
then on advances that reading by the *monotonic* clock. A wall-clock step on the leader while
it leads changes nothing; a step on a follower changes nothing at all (followers never stamp).
The state machine additionally never lets its log clock go backwards (loom/state/machine.py).

What remains: a node whose wall clock was already wrong when it became leader starts from that
reading (forward: entries with a TTL expire early; backward: the log clock holds still until
real time catches up). SECURITY-CATALOGUE I8 is checked in tests/node/test_clock.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ProposalClock:
    def __init__(self, log_clock_ms: Callable[[], int],
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 mono_s: Callable[[], float] = time.monotonic) -> None:
        self._log_clock_ms = log_clock_ms
        self._wall_ms = wall_ms
        self._mono_s = mono_s
        self._anchor_ms = 0
        self._anchor_mono = 0.0
        self.anchor()

    def anchor(self) -> None:
        """Take a fresh wall-clock reading: at start and when this node becomes leader."""
        self._anchor_ms = max(self._wall_ms(), self._log_clock_ms())
        self._anchor_mono = self._mono_s()

    def now_ms(self) -> int:
        return self._anchor_ms + int((self._mono_s() - self._anchor_mono) * 1000)
