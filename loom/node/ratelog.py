"""Log lines an outsider can cause, at a bounded rate.

A peer listener logs every refused connection, and anyone who can reach the port can cause
one: unbounded, that is a way to fill the disk or bury the lines that matter. Per key (a
refusal reason, say) at most `burst` lines are written per `window_s`; the first line let
through after that says how many were suppressed. Exact totals live in counters
(`statistics()`), never only in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

MAX_KEYS = 256  # distinct keys tracked; beyond, the table starts over (bounded memory)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, burst: int, window_s: float,
                 clock: Callable[[], float]) -> None:
        self._log = logger
        self._burst = burst
        self._window = window_s
        self._clock = clock
        self._keys: dict[str, list[float]] = {}  # key -> [window start, lines, suppressed]
        self.suppressed = 0

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        st = self._keys.get(key)
        if st is None or now - st[0] >= self._window:
            carried = st[2] if st is not None else 0
            if st is None and len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            st = self._keys[key] = [now, 0, carried]
        if st[1] >= self._burst:
            st[2] += 1
            self.suppressed += 1
            return
        st[1] += 1
        if st[2]:
            msg += " (%d similar lines suppressed)"
            args = (*args, int(st[2]))
            st[2] = 0
        self._log.warning(msg, *args)
