"""The sans-IO half of the client: request building, response classification, retry policy.

Both the trio client (`aio.py`) and the blocking client (`sync.py`) drive the same objects here;
neither this module nor the codec knows about sockets or tasks.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loom.client.errors import (
    ConfigError,
    IndeterminateError,
    ProtocolError,
    RequestValidationError,
)
from loom.wire import catalog
from loom.wire.catalog import MessageType
from loom.wire.codec import PROTOCOL_VERSION, FrameError, decode_payload, encode
from loom.wire.errors import (
    BadRequest,
    Busy,
    LoomError,
    NotLeader,
    Status,
    Timeout,
    Unavailable,
    error_from_wire,
)
from loom.wire.schema import Kind

HELLO = catalog.BY_NAME["HELLO"]
DEFAULT_PORT = 6001

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
