"""Client sessions: owners of locks and semaphore permits.

A session id is the log index of its SESSION_OPEN (unique, increasing). A session lives until
`deadline = log clock + ttl_ms`, extended by each heartbeat. Expiry is decided on apply from the
log clock (Core.now, the largest time_ms applied so far): each apply expires at most
`housekeeping_budget` due sessions, popped from a heap of (deadline, id); heartbeats leave stale
heap entries, skipped when popped (their deadline no longer matches) and dropped wholesale when
the heap grows past twice the live sessions. A command naming a session that is due is
expired first, so a command never sees a session past its deadline.

Ending a session (close or expiry) calls `on_end`, which releases its locks and permits.

Ownership: a session belongs to the principal of its SESSION_OPEN (Command.principal, "" for
internal or legacy commands). Every operation naming a session is answered for another
principal exactly as for a session that does not exist (`require`: NOT_FOUND with the same
message; SESSION_CLOSE: False), so session ids, which are predictable, can neither be used nor
probed by anyone but their owner.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from loom.state.base import Core
from loom.wire.errors import LimitExceeded, NotFound


class Session:
    __slots__ = ("deadline", "locks", "permits", "principal", "ttl")

    def __init__(self, ttl: int, deadline: int, principal: str = "") -> None:
        self.ttl = ttl
        self.deadline = deadline
        self.principal = principal  # owner: the only principal that may use the session
        self.locks: dict[str, None] = {}  # names of locks held (ordered by acquisition)
        self.permits: dict[str, int] = {}  # semaphore name -> permits held


class Sessions:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.items: dict[int, Session] = {}
        self.heap: list[tuple[int, int]] = []
        self.on_end: Callable[[int, Session], None] = lambda sid, s: None

    def owned(self, sid: int) -> Session | None:
        """The live session `sid` if the principal of the command being applied owns it."""
        s = self.items.get(sid)
        if s is None or s.principal != self.core.principal:
            return None
        return s

    def require(self, sid: int) -> Session:
        """The session, if it is live and ours; NOT_FOUND alike for absent and foreign ones."""
        s = self.owned(sid)
        if s is None:
            raise NotFound(f"session {sid} not found (closed or expired)")
        return s

    def _push(self, deadline: int, sid: int) -> None:
        heapq.heappush(self.heap, (deadline, sid))
        if len(self.heap) > 2 * len(self.items) + 64:
            self.heap = [(s.deadline, i) for i, s in sorted(self.items.items())]
            heapq.heapify(self.heap)

    def end(self, sid: int) -> None:
        """Close the session now (journaled), releasing what it holds."""
        s = self.items[sid]
        self.on_end(sid, s)
        del self.items[sid]

        def undo() -> None:
            self.items[sid] = s
            self._push(s.deadline, sid)

        self.core.record(undo)

    def expire_if_due(self, sid: int) -> None:
        s = self.items.get(sid)
        if s is not None and s.deadline <= self.core.now:
            self.end(sid)

    def housekeeping(self, budget: int) -> None:
        now = self.core.now
        while budget > 0 and self.heap and self.heap[0][0] <= now:
            deadline, sid = heapq.heappop(self.heap)
            s = self.items.get(sid)
            if s is None or s.deadline != deadline:
                continue  # stale entry (heartbeat or closed)
            self.end(sid)
            budget -= 1

    def live_at(self, sid: int, now: int) -> bool:
        """For reads: whether the session is still alive at `now` (expiry may be pending)."""
        s = self.items.get(sid)
        return s is not None and s.deadline > now

    # -- ops ------------------------------------------------------------------------------
    def op_SESSION_OPEN(self, b: dict[str, Any]) -> dict[str, int]:
        """-> {"session_id": id, "ttl_ms": ttl}. LIMIT_EXCEEDED past max_sessions."""
        if len(self.items) >= self.core.limits.max_sessions:
            raise LimitExceeded(f"too many sessions (max_sessions {self.core.limits.max_sessions})")
        sid, ttl = self.core.index, int(b["ttl_ms"])
        s = Session(ttl, self.core.now + ttl, self.core.principal)
        self.items[sid] = s
        self._push(s.deadline, sid)

        def undo() -> None:
            del self.items[sid]

        self.core.record(undo)
        return {"session_id": sid, "ttl_ms": ttl}

    def op_SESSION_HEARTBEAT(self, b: dict[str, Any]) -> dict[str, int]:
        """-> {"session_id": id, "ttl_ms": ttl}; NOT_FOUND if closed or expired."""
        sid = b["session_id"]
        s = self.require(sid)
        old = s.deadline
        s.deadline = self.core.now + s.ttl
        self._push(s.deadline, sid)

        def undo() -> None:
            s.deadline = old

        self.core.record(undo)
        return {"session_id": sid, "ttl_ms": s.ttl}

    def op_SESSION_CLOSE(self, b: dict[str, Any]) -> bool:
        """-> whether the session was open (its locks and permits are released). Another
        principal's session is left alone and answers False, as an unknown id does."""
        if self.owned(b["session_id"]) is None:
            return False
        self.end(b["session_id"])
        return True

    def dump(self) -> Any:
        return [[sid, s.ttl, s.deadline, s.principal, sorted(s.locks), sorted(s.permits.items())]
                for sid, s in sorted(self.items.items())]

    def load(self, data: Any, with_principal: bool = True) -> None:
        """Rows of `dump`; with_principal=False reads rows without the owner (snapshot format
        1), whose sessions keep the internal owner ""."""
        for row in data:
            if with_principal:
                sid, ttl, deadline, principal, locks, permits = row
            else:
                sid, ttl, deadline, locks, permits = row
                principal = ""
            s = Session(ttl, deadline, principal)
            s.locks = dict.fromkeys(locks)
            s.permits = dict(permits)
            self.items[sid] = s
        self.heap = [(s.deadline, i) for i, s in sorted(self.items.items())]
        heapq.heapify(self.heap)
