"""The sans-IO core of the client: every decision both shells (`aio.py`, `sync.py`) take.

- `Options`: the client's settings, validated once (the shells' keyword arguments map onto it).
- `Router`: which endpoint to dial next (a leader named by NOT_LEADER first, then the endpoints
  in rotation, starting past one that failed), skipping endpoints whose circuit breaker
  (`breaker.py`) is open.
- `Attempts`: one call's retry policy: what an answer, a lost connection or a failed connect
  means (return, retry, raise at once, or "indeterminate"), and when retrying stops.
- The HELLO exchange (`hello_frame`, `accept_hello`) and the frame limit it announces
  (`check_frame_size`: a request over the server's limit is refused here, before it is sent).

Neither this module nor the codec knows about sockets or tasks: the shells own the I/O, the
clocks and the sleeping; the rules live here once.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from loom.client.breaker import BreakerPolicy, EndpointBreaker, EndpointStatistics
from loom.client.errors import (
    ConfigError,
    ConnectError,
    IndeterminateError,
    ProtocolError,
    RequestValidationError,
)
from loom.client.tls import is_permanent
from loom.wire import catalog
from loom.wire.catalog import MessageType
from loom.wire.codec import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    FrameError,
    decode_payload,
    encode,
)
from loom.wire.errors import (
    BadRequest,
    Busy,
    LoomError,
    NotLeader,
    Status,
    Timeout,
    TooLarge,
    Unavailable,
    error_from_wire,
)
from loom.wire.schema import Kind
from loom.wire.session import Session, SessionLimits

HELLO = catalog.BY_NAME["HELLO"]
HELLO_ID = 1  # the request id of HELLO; a connection's requests count on from it
DEFAULT_PORT = 6001
Addr = tuple[str, int]

# Answers that prove the request was not executed, so any request may be sent again.
RETRYABLE: tuple[type[LoomError], ...] = (Busy, Unavailable, NotLeader)


def parse_endpoint(text: str) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' (default port) -> (host, port)."""
    s = text.strip()
    if not s:
        raise ConfigError("empty endpoint")
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep:
            raise ConfigError(f"bad endpoint {text!r}: missing ']'")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif s.count(":") == 1:
        host, _, port_s = s.partition(":")
    else:
        host, port_s = s, ""
    if not host:
        raise ConfigError(f"bad endpoint {text!r}: no host")
    if not port_s:
        return host, DEFAULT_PORT
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"bad endpoint {text!r}: port is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"bad endpoint {text!r}: port out of range")
    return host, port


def parse_endpoints(endpoints: str | list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = [parse_endpoint(e) for e in items if e.strip()]
    if not out:
        raise ConfigError("no endpoints given")
    return out


def format_endpoint(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_type(op: str | int) -> MessageType:
    """The catalog row for a NAME or opcode; RequestValidationError when unknown."""
    mt = catalog.BY_NAME.get(op.upper()) if isinstance(op, str) else catalog.BY_OPCODE.get(op)
    if mt is None or mt.listener is not catalog.Listener.CLIENT:
        raise RequestValidationError(f"unknown operation {op!r}")
    return mt


def _to_bytes(v: Any) -> Any:
    return v.encode("utf-8") if isinstance(v, str) else v


def coerce_body(mt: MessageType, body: Mapping[str, Any]) -> dict[str, Any]:
    """Encode text given for byte fields as UTF-8 (values, value lists, entry maps, batches)."""
    out: dict[str, Any] = {}
    for name, v in body.items():
        f = mt.schema.get(name)
        if f is None or v is None:
            out[name] = v
        elif f.kind is Kind.BYTES:
            out[name] = _to_bytes(v)
        elif f.kind is Kind.VALUES and isinstance(v, list):
            out[name] = [_to_bytes(x) for x in v]
        elif f.kind is Kind.ENTRIES and isinstance(v, dict):
            out[name] = {k: _to_bytes(x) for k, x in v.items()}
        elif f.kind is Kind.OPS and isinstance(v, list):
            out[name] = [_coerce_op(x) for x in v]
        else:
            out[name] = v
    return out


def _coerce_op(item: Any) -> Any:
    if isinstance(item, dict) and isinstance(item.get("op"), str) and isinstance(
        item.get("b"), dict
    ):
        inner = catalog.BY_NAME.get(item["op"])
        if inner is not None:
            return {"op": item["op"], "b": coerce_body(inner, item["b"])}
    return item


def prepare(op: str | int, body: Mapping[str, Any]) -> tuple[MessageType, dict[str, Any]]:
    """Resolve and validate a request locally; nothing invalid is ever sent."""
    mt = resolve_type(op)
    if mt is HELLO:
        raise RequestValidationError("HELLO is sent by the client itself when it connects")
    clean = {k: v for k, v in coerce_body(mt, body).items() if v is not None}
    try:
        return mt, catalog.validate_body(mt, clean)
    except BadRequest as e:
        raise RequestValidationError(e.message) from None


def new_client_id() -> str:
    return uuid.uuid4().hex


def hello_body(client_name: str, client_id: str) -> dict[str, Any]:
    return {"client_name": client_name, "min_version": PROTOCOL_VERSION,
            "max_version": PROTOCOL_VERSION, "client_id": client_id}


def request_frame(
    request_id: int, opcode: int, body: Mapping[str, Any], *, seq: int = 0,
    headers: Mapping[str, str] | None = None, stale: bool = False,
) -> bytes:
    req: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": opcode, "b": dict(body)}
    if seq:
        req["q"] = seq
    if stale:
        req["c"] = "stale"  # a read any node answers from its own replica
    if headers:
        req["h"] = dict(headers)
    return encode(req)


@dataclass(frozen=True, slots=True)
class Response:
    """One frame from the server: an answer (`result` or `error`) or a topic push."""

    request_id: int
    status: int
    result: Any = None
    error: LoomError | None = None
    push: bool = False
    payload: Any = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def parse_response(payload: bytes) -> Response:
    """Decode and shape-check one frame payload from the server."""
    try:
        obj = decode_payload(payload)
    except FrameError as e:
        raise ProtocolError(f"undecodable frame from the server: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a response must be a CBOR map")
    rid, status = obj.get("id"), obj.get("s")
    if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
        raise ProtocolError(f"response without a valid request id: {rid!r}")
    if not isinstance(status, int) or isinstance(status, bool):
        raise ProtocolError(f"response {rid} without a valid status: {status!r}")
    if "p" in obj:
        return Response(rid, status, push=True, payload=obj["p"])
    if status == Status.OK:
        return Response(rid, status, result=obj.get("r"))
    return Response(rid, status, error=error_from_wire(status, obj.get("e")))


@dataclass(frozen=True, slots=True)
class HelloInfo:
    version: int
    node: Any
    max_frame: int
    principal: Any
    roles: list[Any]
    raw: dict[str, Any]


def parse_hello(result: Any) -> HelloInfo:
    if not isinstance(result, dict):
        raise ProtocolError("HELLO answer must be a map")
    version = result.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"server chose protocol version {version!r}")
    max_frame = result.get("max_frame")
    if not isinstance(max_frame, int) or isinstance(max_frame, bool) or max_frame < 4096:
        max_frame = 1 << 20
    roles = result.get("roles")
    return HelloInfo(version, result.get("node"), max_frame, result.get("principal"),
                     list(roles) if isinstance(roles, list) else [], dict(result))


def next_rotation(endpoints: list[tuple[str, int]], addr: tuple[str, int], current: int) -> int:
    """The rotation that starts just past `addr` (unchanged when `addr` is not an endpoint,
    e.g. a leader address learned from NOT_LEADER). Idempotent: every request that fails on
    the same connection moves the rotation to the same place."""
    try:
        return endpoints.index(addr) + 1
    except ValueError:
        return current


def leader_hint(err: LoomError) -> tuple[str, int] | None:
    """The leader's client address from a NOT_LEADER answer, when it names one."""
    if not isinstance(err, NotLeader):
        return None
    addr = err.details.get("leader_addr")
    if not isinstance(addr, str) or not addr:
        return None
    try:
        return parse_endpoint(addr)
    except ConfigError:
        return None


# The server remembers the outcome of the last 64 writes of each client id; a write may only be
# retried while its outcome is still remembered, so fewer than 64 writes may be outstanding.
SERVER_DEDUP_WINDOW = 64
MAX_WRITE_WINDOW = SERVER_DEDUP_WINDOW - 1
MAX_RETRY_AFTER = 30.0  # seconds; a larger retry_after_ms is treated as this


@dataclass(slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: retry n sleeps uniform(0, min(cap, base*2^n)),
    and at least BUSY's retry_after_ms. Retries stop after `attempts` tries or at the call's
    deadline, whichever comes first."""

    attempts: int = 16
    base: float = 0.05
    cap: float = 2.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_for(self, err: BaseException | None, n: int) -> float:
        """Delay before retry n, honouring BUSY's retry_after_ms when the server sends one."""
        d = self.rng.uniform(0, min(self.cap, self.base * (2**n)))
        return max(d, retry_after(err))


def retry_after(err: BaseException | None) -> float:
    """BUSY's retry_after_ms in seconds (0 when absent or not a BUSY answer)."""
    if not isinstance(err, Busy):
        return 0.0
    ra = err.details.get("retry_after_ms")
    if isinstance(ra, int) and not isinstance(ra, bool) and ra > 0:
        return min(ra / 1000, MAX_RETRY_AFTER)
    return 0.0


class WriteWindow:
    """Write sequence numbers (per client, never reused), issued so that the newest issued write
    is never `size` or more numbers ahead of the oldest unfinished one.

    Every retry of a write reuses its number and the server deduplicates by (client id, seq)
    over the last SERVER_DEDUP_WINDOW outcomes. Bounding the span (not just the count) keeps a
    slow write's outcome inside that memory however many later writes finish before it is
    retried. `can_issue()` false: the caller waits for `finish()` of the oldest."""

    def __init__(self, size: int = 32) -> None:
        if not 1 <= size <= MAX_WRITE_WINDOW:
            raise ConfigError(f"max_writes_in_flight must be 1..{MAX_WRITE_WINDOW}, got {size}")
        self.size = size
        self._last = 0
        self._open: set[int] = set()

    @property
    def outstanding(self) -> int:
        return len(self._open)

    @property
    def oldest(self) -> int | None:
        return min(self._open, default=None)

    def can_issue(self) -> bool:
        low = min(self._open, default=self._last + 1)
        return self._last + 1 - low < self.size

    def issue(self) -> int:
        if not self.can_issue():
            raise RuntimeError("write window full")
        self._last += 1
        self._open.add(self._last)
        return self._last

    def finish(self, seq: int) -> None:
        self._open.discard(seq)


def timeout_error(mt: MessageType, sent: bool, seconds: float | None) -> LoomError:
    what = f"{mt.name}: no answer" + (f" within {seconds:g}s" if seconds is not None else "")
    if sent and mt.is_write:
        return IndeterminateError(what)
    return Timeout(what + ("" if sent else " (not sent)"))


# -- options ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Options:
    """Everything a client is configured with; both shells take these as keyword arguments.

    `timeout` bounds one call, retries included; `connect_timeout` one dial (TCP, TLS, HELLO).
    `max_in_flight` bounds the async client's concurrent requests (the blocking client has one).
    `resend_unknown_writes`: a write whose connection was lost after it was sent is sent again
    with the same sequence number (the server answers a duplicate from its memory); False
    raises IndeterminateError at once instead."""

    endpoints: tuple[Addr, ...]
    ca: str | Path
    cert: str | Path | None = None
    key: str | Path | None = None
    # A file (mode 0600) holding the passphrase of an encrypted `key`; never the passphrase.
    key_passphrase_file: str | Path | None = None
    client_name: str = "loom-py"
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    server_hostname: str | None = None
    check_hostname: bool = True
    client_id: str = ""
    resend_unknown_writes: bool = True
    max_writes_in_flight: int = 32
    max_in_flight: int = 1024
    connect_timeout: float = 5.0
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)

    @classmethod
    def build(cls, endpoints: str | Sequence[str], **kw: Any) -> Options:
        """Options from the shells' keyword arguments (None means the default)."""
        given = {k: v for k, v in kw.items() if v is not None}
        unknown = set(given) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown client option(s): {sorted(unknown)}")
        if "headers" in given:
            given["headers"] = dict(given["headers"])  # the caller's mapping may change later
        eps = parse_endpoints(endpoints if isinstance(endpoints, str) else list(endpoints))
        opts = cls(tuple(eps), **given)
        if not opts.client_id:
            opts = replace(opts, client_id=new_client_id())
        if opts.timeout <= 0 or opts.connect_timeout <= 0:
            raise ConfigError("timeout and connect_timeout must be positive")
        if opts.max_in_flight < 1:
            raise ConfigError("max_in_flight must be at least 1")
        return opts

    @property
    def sent_cert(self) -> bool:
        return self.cert is not None


# -- routing ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClientStatistics:
    endpoints: tuple[EndpointStatistics, ...]  # one per configured endpoint, in order
    skipped: int  # dials not made because the endpoint's breaker was open


class Router:
    """Which endpoint to dial: the leader a NOT_LEADER answer named, then every endpoint in
    rotation. A lost connection or an UNAVAILABLE answer moves the rotation past that node.
    An endpoint whose breaker is open is left out until its window passes, and is then offered
    after every closed endpoint (its one trial), except the leader a NOT_LEADER answer named:
    its trial comes first, since the closed endpoints have just said they cannot serve (with
    it last, a client connected to a follower would never try the leader again). The shells
    report each dial: `dialing`, then `connected`, `dial_failed` (a connect timeout included)
    or `abandoned` (the call's own deadline or cancellation), and `timed_out` for a request
    that got no answer before the call's deadline."""

    def __init__(self, endpoints: Sequence[Addr], breaker: BreakerPolicy | None = None) -> None:
        self.endpoints = list(endpoints)
        self.preferred: Addr | None = None
        self.rotate = 0
        policy = breaker or BreakerPolicy()
        self.breakers = {a: EndpointBreaker(policy) for a in self.endpoints}
        self.skipped = 0

    def _breaker(self, addr: Addr) -> EndpointBreaker:
        b = self.breakers.get(addr)
        if b is None:  # a leader named by NOT_LEADER that is not configured
            b = self.breakers[addr] = EndpointBreaker(next(iter(self.breakers.values())).policy)
        return b

    def candidates(self, now: float) -> list[Addr]:
        """The endpoints to try, in order, each once: closed ones, then those due a trial (the
        named leader first, closed or due)."""
        n = len(self.endpoints)
        first = [self.preferred] if self.preferred is not None else []
        order = list(dict.fromkeys(first + [self.endpoints[(self.rotate + i) % n]
                                            for i in range(n)]))
        closed = [a for a in order if self._breaker(a).closed()]
        trials = [a for a in order if self._breaker(a).due(now)]
        self.skipped += len(order) - len(closed) - len(trials)
        if self.preferred is not None and self.preferred in trials:
            return [self.preferred, *closed, *(a for a in trials if a != self.preferred)]
        return closed + trials

    def dialing(self, addr: Addr, now: float) -> None:
        self._breaker(addr).dialing(now)

    def connected(self, addr: Addr) -> None:
        self._breaker(addr).succeeded()

    def dial_failed(self, addr: Addr, now: float) -> None:
        if addr == self.preferred:
            self.preferred = None
        self._breaker(addr).failed(now)

    def abandoned(self, addr: Addr) -> None:
        """A dial to `addr` was given up for the caller's own deadline or cancellation."""
        self._breaker(addr).abandoned()

    def timed_out(self, addr: Addr, now: float) -> None:
        """A request on `addr` got no answer within the call's deadline."""
        self._breaker(addr).failed(now)

    def statistics(self, now: float) -> ClientStatistics:
        return ClientStatistics(tuple(self._breaker(a).statistics(format_endpoint(a), now)
                                      for a in self.endpoints), self.skipped)

    def lost(self, addr: Addr) -> None:
        """The connection to `addr` broke: start with the endpoint after it."""
        self.rotate = next_rotation(self.endpoints, addr, self.rotate)

    def refused(self, addr: Addr, err: LoomError) -> bool:
        """A node answered `err`. True when the client should leave that node's connection:
        NOT_LEADER (to the leader it names, else the next endpoint) and UNAVAILABLE (the next
        endpoint). BUSY and every other answer keep the connection."""
        if not isinstance(err, (NotLeader, Unavailable)):
            return False
        hint = leader_hint(err)
        self.preferred = None if hint == addr else hint  # a node naming itself is no hint
        if self.preferred is None:
            self.lost(addr)
        return True


def connect_failure(errors: list[str]) -> ConnectError:
    """The error after every candidate failed: permanent when each failure was a certificate
    problem (retrying cannot help)."""
    if not errors:
        return ConnectError("could not connect: every endpoint's circuit breaker is open")
    return ConnectError("could not connect: " + "; ".join(errors),
                        permanent=bool(errors) and all(
                            is_permanent(e.split(": ", 1)[-1]) for e in errors))


# -- the HELLO exchange -------------------------------------------------------------------------
def hello_frame(opts: Options) -> bytes:
    """The first frame on every connection (request id HELLO_ID)."""
    return request_frame(HELLO_ID, HELLO.opcode, hello_body(opts.client_name, opts.client_id))


def new_session(opts: Options, *, now: float) -> Session:
    """The client's side of the session protocol (wire/session.py): before the HELLO answer it
    takes frames up to DEFAULT_MAX_FRAME; HELLO must be answered within `connect_timeout`; the
    client itself never gives up on an idle connection."""
    return Session(SessionLimits(max_frame=DEFAULT_MAX_FRAME, hello_timeout_s=opts.connect_timeout,
                                 pre_hello_max_frame=DEFAULT_MAX_FRAME), now=now)


def answer_limit(hello: HelloInfo) -> int:
    """The largest answer the client accepts once HELLO said the server's frame limit."""
    return max(hello.max_frame, DEFAULT_MAX_FRAME)


def accept_hello(payload: bytes) -> HelloInfo:
    """The server's answer to HELLO: its session parameters, or the error it refused with."""
    r = parse_response(payload)
    if r.push or r.request_id not in (HELLO_ID, 0):
        raise ProtocolError(f"expected the answer to HELLO, got a frame for {r.request_id}")
    return parse_hello(r.value())


def check_frame_size(mt: MessageType, frame: bytes, max_frame: int) -> None:
    """A request larger than the server's frame limit is refused here, never sent: the server
    would answer it only by closing the connection (the stream can no longer be framed)."""
    size = len(frame) - 4
    if size > max_frame:
        raise TooLarge(f"{mt.name}: request of {size} bytes exceeds the server's frame limit "
                       f"of {max_frame} bytes (limits.max_frame_bytes); nothing was sent",
                       size=size, limit=max_frame)


# -- one call's attempts ------------------------------------------------------------------------
class ConnectionLost(Exception):
    """The connection ended while a request of ours was outstanding (internal to the client)."""


RETRY: Final = object()  # `Attempts.answered` says: send the request again


class Attempts:
    """One call: what it has tried, and the one policy deciding what comes next.

    The shells loop: `pause()` (None: stop), dial, `sending()`, then report exactly one of
    `answered`, `lost` or `connect_failed`; when the loop stops, raise `exhausted()`.

    Definite answers (every error but NOT_LEADER, UNAVAILABLE and BUSY, which prove the request
    was not executed) raise at once. Only a write that was sent and never answered is
    indeterminate; a server TIMEOUT for a write is too (it may still apply)."""

    __slots__ = ("_n", "last", "mt", "policy", "resend", "sent", "unknown")

    def __init__(self, mt: MessageType, policy: RetryPolicy, *, resend: bool) -> None:
        self.mt = mt
        self.policy = policy
        self.resend = resend
        self.sent = False  # the current attempt's frame may have reached a server
        self.unknown = False  # an earlier attempt of this write was lost after being sent
        self.last: BaseException | None = None
        self._n = 0

    def pause(self) -> float | None:
        """Seconds to wait before the next attempt (0 before the first); None: no attempt left.
        The shell also stops when the pause would outlast the call's deadline."""
        n = self._n
        if n >= max(1, self.policy.attempts):
            return None
        self._n += 1
        return 0.0 if n == 0 else self.policy.delay_for(self.last, n - 1)

    def sending(self) -> None:
        self.sent = True

    def answered(self, r: Response) -> Any:
        """The result, or RETRY; raises the answer's error when it is definite."""
        self.sent = False  # an answer settles this attempt
        if r.error is None:
            return r.result
        if isinstance(r.error, RETRYABLE):
            self.last = r.error
            return RETRY
        if isinstance(r.error, Timeout) and self.mt.is_write:
            raise IndeterminateError(f"{self.mt.name}: {r.error.message}") from r.error
        raise r.error

    def lost(self, reason: str) -> None:
        """The connection ended before the answer came: retry, or raise IndeterminateError for
        a sent write when `resend_unknown_writes` is off."""
        if self.mt.is_write and self.sent:
            self.unknown = True
            if not self.resend:
                raise IndeterminateError(f"{self.mt.name}: {reason}")
        self.sent = False
        self.last = ConnectError(reason)

    def connect_failed(self, err: ConnectError) -> None:
        if err.permanent:
            raise err
        self.last = err

    def exhausted(self) -> BaseException:
        """What to raise when no attempt is left or the deadline is near."""
        if self.unknown:
            return IndeterminateError(f"{self.mt.name}: {self.last}")
        return self.last if self.last is not None else Timeout(f"{self.mt.name}: not sent")

    def timed_out(self, seconds: float | None) -> LoomError:
        """What to raise when the call's deadline passed during an attempt."""
        return timeout_error(self.mt, self.sent or self.unknown, seconds)
