"""The session protocol every Loom connection speaks, as one sans-IO state machine.

    AWAIT_HELLO --HELLO accepted--> OPEN --request--> OPEN
         |                            |
         +--refused / EOF / timeout / protocol error / close--> CLOSED (final)

All states, events and transitions are in the tables below (h11's `_state.py` is the model);
the client listener (node/connection.py), the peer listener (node/peer.py) and the clients
(client/aio.py, client/sync.py) drive the same `Session`, which owns:

- framing: bytes in (`receive_data`), whole payloads out (`next_payload`), with the frame limit
  of the current state: `pre_hello_max_frame` (4 KiB on a listener: an unauthenticated peer
  cannot make us buffer more, Redis CVE-2021-32675) until HELLO, then `max_frame`;
- the read deadline of the current state: HELLO must arrive by a fixed deadline counted from the
  start of the session, later reads by `idle_timeout_s` after the previous one;
- the gate: no request is handed on before HELLO was accepted.

The rules a future listener (HTTP) needs on their own are plain functions: `negotiate_version`,
`accept_hello` and `check_peer_hello`. Identity rules live in security/identity.py.

Errors: `RemoteProtocolError` is the other side breaking the protocol (answer `answer`, then
close); `LocalProtocolError` is our own code firing an event the current state does not allow
(a bug: never caught, like h11's).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from loom.wire import catalog
from loom.wire.catalog import Listener
from loom.wire.codec import (
    PRE_HELLO_MAX_FRAME,
    SUPPORTED_VERSIONS,
    FrameDecoder,
    FrameError,
    Request,
)
from loom.wire.errors import (
    BadRequest,
    LoomError,
    Status,
    TooLarge,
    Unauthenticated,
    UnsupportedVersion,
)


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"  # only HELLO (PEER_HELLO), in frames of pre_hello_max_frame
    OPEN = "open"  # requests, in frames of max_frame
    CLOSED = "closed"  # final: nothing more is read


class Event(enum.Enum):
    HELLO_ACCEPTED = "hello_accepted"
    HELLO_REFUSED = "hello_refused"
    REQUEST = "request"  # a payload handed on as a request
    EOF = "eof"  # the other side closed its half
    TIMEOUT = "timeout"  # the state's read deadline passed
    PROTOCOL_ERROR = "protocol_error"  # a frame that cannot be framed, or refused before HELLO
    CLOSE = "close"  # we end the session (shutdown, a limit, a write stall)


_ENDINGS = {e: State.CLOSED for e in (Event.EOF, Event.TIMEOUT, Event.PROTOCOL_ERROR,
                                      Event.CLOSE)}

# Every transition there is. An event missing from a state's row is a LocalProtocolError.
TRANSITIONS: dict[State, dict[Event, State]] = {
    State.AWAIT_HELLO: {Event.HELLO_ACCEPTED: State.OPEN, Event.HELLO_REFUSED: State.CLOSED,
                        **_ENDINGS},
    State.OPEN: {Event.REQUEST: State.OPEN, **_ENDINGS},
    State.CLOSED: {Event.CLOSE: State.CLOSED},  # closing twice is harmless
}

# REQUEST never changes the state, so it is not fired per request (that would cost the request
# path half a microsecond): `Session.open` reads its column instead.
_TAKES_REQUESTS = frozenset(s for s, row in TRANSITIONS.items() if Event.REQUEST in row)

# Why a session timed out, by the state it was in.
TIMEOUT_REASON: dict[State, str] = {
    State.AWAIT_HELLO: "no HELLO in time",
    State.OPEN: "idle timeout",
}


class LocalProtocolError(Exception):
    """Our own code fired an event the session's state does not allow (a bug)."""


class RemoteProtocolError(Exception):
    """The other side broke the protocol. `answer` is the error to send back (if the stream
    still allows an answer) before the connection is closed."""

    def __init__(self, message: str, answer: LoomError) -> None:
        super().__init__(message)
        self.answer = answer


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """`max_frame`: the largest frame after HELLO; `pre_hello_max_frame`: before it.
    `hello_timeout_s`: from the start of the session to an accepted HELLO; `idle_timeout_s`:
    the longest wait for bytes once open (math.inf: none)."""

    max_frame: int
    hello_timeout_s: float
    idle_timeout_s: float = math.inf
    pre_hello_max_frame: int = PRE_HELLO_MAX_FRAME

    def __post_init__(self) -> None:
        if not 0 < self.pre_hello_max_frame <= self.max_frame:
            raise ValueError("need 0 < pre_hello_max_frame <= max_frame")
        if self.hello_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("timeouts must be positive")


class _ClosedDecoder(FrameDecoder):
    """What a closed session frames with: nothing."""

    def feed(self, data: bytes | bytearray) -> None:
        raise LocalProtocolError("data received on a closed session")

    def next_payload(self) -> bytes | None:
        return None


_CLOSED = _ClosedDecoder()


class Session:
    """One connection's session state, framing and read deadlines. Never does I/O."""

    __slots__ = ("_decoder", "_hello_deadline", "ended_by", "greeted", "limits", "open", "state")

    def __init__(self, limits: SessionLimits, *, now: float) -> None:
        self.limits = limits
        self.state = State.AWAIT_HELLO
        # Requests may be handed on (HELLO accepted, not closed): the table's REQUEST column
        # for the current state, kept as a plain attribute because every request reads it.
        self.open = False
        self.ended_by: str | None = None  # why the session closed
        self.greeted = False  # HELLO was accepted at some point (the session may be closed now)
        self._decoder = FrameDecoder(limits.pre_hello_max_frame)
        self._hello_deadline = now + limits.hello_timeout_s

    @property
    def max_frame(self) -> int:
        """The frame limit in force now."""
        return self._decoder.max_frame

    def _fire(self, event: Event, reason: str | None = None) -> None:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise LocalProtocolError(f"{event.name} is not allowed in {self.state.name}"
                                     ) from None
        self.open = self.state in _TAKES_REQUESTS
        if self.state is State.CLOSED:
            self._decoder = _CLOSED  # nothing more is framed; more bytes are our own bug
        if self.state is State.CLOSED and self.ended_by is None:
            self.ended_by = reason or event.value

    # -- reading --------------------------------------------------------------------------------
    def deadline(self, now: float) -> float:
        """When the wait for the next bytes must end (the caller's cancel scope)."""
        if self.state is State.AWAIT_HELLO:
            return self._hello_deadline
        return now + self.limits.idle_timeout_s

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes read from the stream; b"" means the other side closed (EOF)."""
        if data:
            self._decoder.feed(data)  # a closed session's decoder raises LocalProtocolError
        else:
            self._fire(Event.EOF, "closed by the other side")

    def next_payload(self) -> bytes | None:
        """The next whole frame's payload, or None until more bytes arrive. A length prefix
        that is empty or over the current limit closes the session (RemoteProtocolError: the
        stream can no longer be framed). A closed session frames nothing more (None)."""
        try:
            return self._decoder.next_payload()
        except FrameError as e:
            self._fire(Event.PROTOCOL_ERROR, str(e))
            answer = TooLarge(str(e)) if e.status is Status.TOO_LARGE else BadRequest(str(e))
            raise RemoteProtocolError(str(e), answer) from None

    def timed_out(self) -> str:
        """The read deadline passed: close, and say why."""
        reason = TIMEOUT_REASON.get(self.state, "timeout")
        if self.state is not State.CLOSED:
            self._fire(Event.TIMEOUT, reason)
        return reason

    # -- the gate -------------------------------------------------------------------------------
    def hello_accepted(self, max_frame: int | None = None) -> None:
        """HELLO was accepted: requests may follow, in frames up to `max_frame` (default the
        limit's; a client sets the one the server announced)."""
        self._fire(Event.HELLO_ACCEPTED)
        self.greeted = True
        self._decoder.max_frame = self.limits.max_frame if max_frame is None else max_frame

    def hello_refused(self, reason: str) -> None:
        self._fire(Event.HELLO_REFUSED, f"HELLO refused: {reason}")

    def protocol_error(self, reason: str) -> None:
        self._fire(Event.PROTOCOL_ERROR, reason)

    def close(self, reason: str) -> None:
        self._fire(Event.CLOSE, reason)


# -- the rules, callable on their own -----------------------------------------------------------
def negotiate_version(min_version: int, max_version: int,
                      supported: tuple[int, ...] = SUPPORTED_VERSIONS) -> int:
    """The highest version both sides speak; UnsupportedVersion when there is none."""
    common = [v for v in supported if min_version <= v <= max_version]
    if not common:
        raise UnsupportedVersion(f"server speaks protocol versions {list(supported)}")
    return max(common)


@dataclass(frozen=True, slots=True)
class HelloTerms:
    version: int
    client_id: str


def accept_hello(req: Request) -> HelloTerms:
    """Check a client's first request: it must be HELLO, valid, with a version we speak and no
    identity headers (a gateway asserts identity per request, never for a session)."""
    mt = catalog.lookup(req.opcode, Listener.CLIENT)
    if mt.name != "HELLO":
        raise BadRequest("the first request on a connection must be HELLO")
    body = catalog.validate_body(mt, req.body)
    version = negotiate_version(body["min_version"], body["max_version"])
    if req.headers:
        raise Unauthenticated("identity headers are not accepted on HELLO")
    return HelloTerms(version, body.get("client_id", ""))


def check_peer_hello(body: dict[str, Any], node: str, cluster: str) -> None:
    """A PEER_HELLO must name the node its certificate names, and our cluster."""
    if body["node"] != node:
        raise BadRequest(f"PEER_HELLO names {body['node']!r}, certificate {node!r}")
    if body["cluster"] != cluster:
        raise BadRequest(f"PEER_HELLO is for cluster {body['cluster']!r}")
