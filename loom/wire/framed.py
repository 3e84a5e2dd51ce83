"""The one framed read loop: a stream's bytes into a `Session`, whole payloads out to a handler.

Used by the client listener (node/connection.py), the peer listener (node/peer.py) and the async
client (client/aio.py). It is async but tied to no library: the caller passes `receive` (b"" at
EOF), a cancel scope (trio's or anyio's) and that library's clock, and the loop keeps the
scope's deadline on the session's read deadline while it waits for bytes, and nowhere else:
time spent in the handler (waiting for a free request slot, say) is not idleness.

Invariant: payloads are handed on in order, one at a time, and the next read starts only after
the handler returned for every payload the last read completed. A handler that waits therefore
stops the reading, which pushes back on the sender through TCP.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from loom.wire.session import Session

Handler = Callable[[bytes], Awaitable[None] | None]


class DeadlineScope(Protocol):
    """What the loop needs of a cancel scope (`trio.CancelScope`, `anyio.CancelScope`)."""

    deadline: float

    @property
    def cancelled_caught(self) -> bool: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> bool: ...


class FramedReader:
    """Reads frames for one session. `waiting` is true while the loop waits for bytes (no
    request is being read): the node's connection uses it to write a lone answer directly."""

    __slots__ = ("_clock", "_receive", "_scope", "session", "waiting")

    def __init__(self, session: Session, receive: Callable[[], Awaitable[bytes | bytearray]],
                 scope: DeadlineScope, clock: Callable[[], float]) -> None:
        self.session = session
        self.waiting = False
        self._receive = receive
        self._scope = scope
        self._clock = clock

    async def run(self, handle: Handler) -> str | None:
        """Read until the other side closes (None) or the session's deadline passes (the
        reason; the session is closed). RemoteProtocolError, LocalProtocolError and the
        stream's own errors propagate; so does whatever the handler raises."""
        session, scope = self.session, self._scope
        deadline = math.inf  # the scope's, kept here: moving a deadline costs the scheduler
        with scope:
            while True:
                wanted = session.deadline(self._clock())
                if wanted != deadline:
                    scope.deadline = deadline = wanted
                self.waiting = True
                try:
                    data = await self._receive()
                finally:
                    self.waiting = False
                if deadline != math.inf:
                    scope.deadline = deadline = math.inf
                session.receive_data(data)
                if not data:
                    return None
                while (payload := session.next_payload()) is not None:
                    pending = handle(payload)
                    if pending is not None:
                        await pending
        # Only the deadline ends the loop without returning or raising.
        return session.timed_out()
