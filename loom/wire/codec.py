"""Frames on the wire: a 4-byte big-endian length, then one CBOR map. Sans-IO.

Request   {"v": version, "id": request id, "op": opcode, "b": body map, "h": {header: str}?,
           "q": sequence number? (writes: retry deduplication, with HELLO's client_id)}
Response  {"id": request id, "s": status, "r": result}            (status OK)
          {"id": request id, "s": status, "e": {"code", "msg", ...}} (any other status)
Push      {"id": subscription request id, "s": 0, "p": payload}    (server to client, topics)

Decoding is strict and bounded (FIELD-NOTES, SECURITY-CATALOGUE F1/F2): the length prefix is
checked against the limit before a byte of the payload is buffered; CBOR is decoded with a
depth limit, no indefinite-length items, no duplicate keys, only text/byte-string map keys, and
every semantic tag refused; trailing bytes after the map are an error.

Two kinds of failure: a bad *payload* inside a well-formed frame (`FrameError(fatal=False)`)
is answered and the connection goes on; a bad *length prefix* means the stream can no longer be
framed (`fatal=True`) and the connection must be closed.
"""

from __future__ import annotations

import functools
import io
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from loom.wire.errors import BadRequest, LoomError, Status, TooLarge

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB
PRE_HELLO_MAX_FRAME = 4096  # until HELLO succeeds, only tiny frames (Redis CVE-2021-32675)
MAX_DEPTH = 8  # request map -> body -> ops list -> op -> body -> entries map: 6 levels
MAX_HEADERS = 8
MAX_HEADER_VALUE = 1024

# Semantic tags cbor2 decodes on its own (datetimes, bignums, shared references, regexes, ...).
# Every one is refused: our frames carry only plain types.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                 1004, 43000, 55799)


@dataclass(frozen=True, slots=True)
class ItemLimits:
    """How many CBOR data items one frame may make the decoder build (SECURITY-CATALOGUE F2).

    Size and depth do not bound decoding work: a 1 MiB frame of 1-byte empty arrays holds a
    million items and took 0.2-0.3 s to decode, on the event loop, before any ACL check.
    `scan_items` counts items from the CBOR headers alone (strings are skipped by their length)
    and stops at the first limit exceeded, so a refused frame costs at most `per_frame` header
    reads, and cbor2 never sees it. Every data item counts: scalars, strings, containers, and
    both the key and the value of a map entry.

    `per_frame`: items in the whole frame; `per_container`: elements of one array or entries of
    one map; `body`: opcode -> items the body ("b") of that type may hold, from the catalog's
    schemas, checked when "op" precedes "b" in the request map (as every Loom client writes
    it); otherwise only `per_frame` applies to the body."""

    per_frame: int
    per_container: int
    body: Mapping[int, int] | None = None

    @property
    def scan_above(self) -> int:
        """Payloads of at most this many bytes are not scanned: every item takes at least a
        byte, so they cannot exceed `per_frame`, and decoding them costs no more than a
        scan would (the scan, in Python, costs about 0.2 us per item; cbor2 about 0.07)."""
        return self.per_frame


class FrameError(Exception):
    def __init__(self, message: str, *, fatal: bool, status: Status = Status.BAD_REQUEST):
        super().__init__(message)
        self.fatal = fatal
        self.status = status


def _refuse_tag(decoder: Any, tag: Any = None) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


_SEMANTIC = {t: _refuse_tag for t in _BUILTIN_TAGS}


def encode(obj: Any) -> bytes:
    """One frame: length prefix + CBOR."""
    payload = cbor2.dumps(obj)
    return HEADER.pack(len(payload)) + payload


_HEAD = (struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q"))


def _too_many(what: str) -> FrameError:
    return FrameError(what, fatal=False, status=Status.TOO_LARGE)


def scan_items(payload: bytes, limits: ItemLimits) -> int:
    """Count the data items of the one CBOR item in `payload` from its headers; return the count.

    FrameError (TOO_LARGE) as soon as a limit is exceeded; FrameError (BAD_REQUEST) for what
    the strict decoder refuses anyway (tags, indefinite lengths, truncation, trailing bytes).
    Exact: the count is the number of items cbor2 would build. Bounded: at most
    `per_frame` + 1 headers are read, whatever the payload declares; nesting is left to
    cbor2's `max_depth` (the stack here grows by at most one per item read)."""
    n = len(payload)
    per_frame, per_container, body = limits.per_frame, limits.per_container, limits.body
    pos = items = 0
    left = [1]  # items still to read in each open container, innermost last
    key: Any = None  # the top-level map's key just read (None: a key comes next)
    budget = -1  # items the body may hold: known once "op" was read (-1: unchecked)
    body_from = -1  # `items` before the body's first item while inside it, else -1
    while left:
        if pos >= n:
            raise FrameError("malformed CBOR: truncated", fatal=False)
        ib = payload[pos]
        pos += 1
        major, info = ib >> 5, ib & 31
        if info < 24:
            arg = info
        elif info < 28:
            size = 1 << (info - 24)
            if pos + size > n:
                raise FrameError("malformed CBOR: truncated", fatal=False)
            arg = _HEAD[info - 24].unpack_from(payload, pos)[0]
            pos += size
        else:
            raise FrameError("malformed CBOR: indefinite-length or reserved item", fatal=False)
        items += 1
        if items > per_frame:
            raise _too_many(f"more than {per_frame} CBOR items in one frame")
        if body_from >= 0 and items - body_from > budget:
            raise _too_many(f"the request body holds more items than its type allows "
                            f"({budget})")
        depth = len(left)  # 1: the top-level item; 2: a key or value of the top-level map
        left[-1] -= 1
        value: Any = None
        if major in {2, 3}:
            pos += arg
            if pos > n:
                raise FrameError("malformed CBOR: truncated", fatal=False)
            if major == 3 and arg <= 2:
                value = payload[pos - arg:pos]
        elif major in {4, 5}:
            if arg > per_container:
                raise _too_many(f"a CBOR container of {arg} items (at most {per_container})")
            if arg:
                left.append(arg * 2 if major == 5 else arg)
        elif major == 6:
            raise FrameError("malformed CBOR: CBOR tags are not allowed", fatal=False)
        elif major == 0:
            value = arg
        if depth == 2 and body is not None:  # the request map: {"op": ..., "b": {...}, ...}
            if key is None:
                key = b"" if value is None else value
            else:
                if key == b"op" and major == 0:
                    budget = body.get(arg, -1)
                elif key == b"b" and budget >= 0 and len(left) > depth:
                    body_from = items - 1
                    if (arg * 2 if major == 5 else arg) >= budget:
                        raise _too_many(f"the request body holds more items than its type "
                                        f"allows ({budget})")
                key = None
        while left and left[-1] == 0:
            left.pop()
        if body_from >= 0 and len(left) <= 2:
            body_from = -1  # the body is complete
    if pos != n:
        raise FrameError(f"{n - pos} trailing bytes after the CBOR item", fatal=False)
    return items


# Per frame: a MAP_PUT_ALL of 1,024 entries is 2,060 items, so it fits with room to spare.
# Scanning and decoding this many items takes about 1 ms (bench/hostile_frames_bench.py).
MAX_FRAME_ITEMS = 4096


@functools.cache
def client_item_limits() -> ItemLimits:
    """The limits for requests on the client listener, from the catalog's schemas."""
    from loom.wire import catalog  # the catalog imports nothing of the codec
    from loom.wire.schema import MAX_LIST_ITEMS, max_body_items

    batchable = [mt for mt in catalog.client_types()
                 if mt.access is catalog.Access.WRITE and not mt.waits and mt.has_structure]
    # One batched op: its map, "op" and the type name, "b" and the body.
    op_items = 5 + max(max_body_items(mt.schema) or MAX_FRAME_ITEMS for mt in batchable)
    body: dict[int, int] = {}
    for mt in catalog.client_types():
        n = max_body_items(mt.schema, op_items)
        if n is not None:
            body[mt.opcode] = n
    return ItemLimits(per_frame=MAX_FRAME_ITEMS, per_container=MAX_LIST_ITEMS, body=body)


class DecodeBudget:
    """A connection's share of the event loop for decoding: a token bucket of seconds.

    Item limits bound what one frame costs (about 1 ms at most); they cannot stop a connection
    from sending such frames back to back, and decoding runs on the event loop that every
    other connection, the Raft driver and the audit drainer share. Each connection may spend
    `share` of wall time decoding, with bursts up to `burst_s`; past that, `charge` returns how
    long the connection must stop reading (TCP backpressure does the rest). A client sending
    ordinary requests uses a few percent at its fastest (a 300-byte MAP_PUT decodes in 2 us).
    The burst is short because the frames of one read are handled without yielding: a 50 ms
    burst let a hostile connection stall every other one for 50 ms twice a second, which cost
    the writers more than the 10% share itself. Pure: the caller passes the time."""

    def __init__(self, share: float = 0.1, burst_s: float = 0.005) -> None:
        if not 0 < share <= 1 or burst_s <= 0:
            raise ValueError("DecodeBudget: share must be in (0, 1] and burst_s positive")
        self.share, self.burst_s = share, burst_s
        self._tokens = burst_s
        self._at: float | None = None
        self.paused_s = 0.0  # total pause imposed (statistics)

    def charge(self, now: float, spent_s: float) -> float:
        """Account `spent_s` seconds of decoding ending at `now`; return the pause owed."""
        if self._at is not None:
            self._tokens = min(self.burst_s, self._tokens + (now - self._at) * self.share)
        self._at = now
        self._tokens -= spent_s
        if self._tokens >= 0:
            return 0.0
        pause = -self._tokens / self.share
        self.paused_s += pause
        return pause


def decode_payload(payload: bytes, max_depth: int = MAX_DEPTH,
                   limits: ItemLimits | None = None) -> Any:
    """Strictly decode one CBOR item that must fill `payload` exactly. With `limits`, a
    payload that could exceed them (more bytes than the smallest limit: every item takes at
    least one byte) is first counted by `scan_items`."""
    if limits is not None and len(payload) > limits.scan_above:
        scan_items(payload, limits)
    fp = io.BytesIO(payload)
    try:
        dec = cbor2.CBORDecoder(
            fp, tag_hook=_refuse_tag, semantic_decoders=_SEMANTIC, max_depth=max_depth,
            allow_indefinite=False, allow_duplicate_keys=False, strict_hashable_types=True,
            str_errors="strict",
        )
        obj = dec.decode()
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError) as e:
        # CBORDecodeEOF is a CBORDecodeError: a declared length larger than the frame lands here
        # before anything that large is allocated (the frame itself is bounded).
        raise FrameError(f"malformed CBOR: {e}", fatal=False) from None
    if fp.tell() != len(payload):
        raise FrameError(f"{len(payload) - fp.tell()} trailing bytes after the CBOR item",
                         fatal=False)
    return obj


class FrameDecoder:
    """Buffers bytes and hands out whole frame payloads. `max_frame` may change (after HELLO)."""

    def __init__(self, max_frame: int = PRE_HELLO_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_payload(self) -> bytes | None:
        """The next complete payload, None if more bytes are needed; FrameError(fatal) if the
        declared length is 0 or over the limit (checked before the payload is buffered)."""
        if len(self._buf) < HEADER.size:
            return None
        (n,) = HEADER.unpack_from(self._buf)
        if n == 0:
            raise FrameError("empty frame", fatal=True)
        if n > self.max_frame:
            raise FrameError(f"frame of {n} bytes exceeds the limit of {self.max_frame}",
                             fatal=True, status=Status.TOO_LARGE)
        end = HEADER.size + n
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return payload


@dataclass(slots=True)  # not frozen: one is built per request, and frozen init costs 4x
class Request:
    version: int
    request_id: int
    opcode: int
    body: Any
    # A frame's "h" map; the HTTP door gives (name, value) pairs, so that a repeated or
    # lookalike header stays visible to the gateway rules (security/gateway.py).
    headers: Mapping[str, str] | Sequence[tuple[str, str]]
    seq: int = 0
    stale: bool = False  # "c": "stale": a read served by any node from its own replica
    # A valid W3C traceparent (an HTTP header, or the header map's "traceparent" key, which
    # parse_request takes out of `headers`); the audit record carries it as `request_id`,
    # beside (never instead of) the client id, and a request span is its child (obs/tracing).
    trace: str = ""


# W3C Trace Context: version-traceid-parentid-flags. Version ff, an all-zero trace id or an
# all-zero parent id is invalid; an invalid value is ignored (the request is still served).
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
TRACEPARENT = "traceparent"  # its key in a request's header map, beside identity headers


def valid_traceparent(value: str) -> str:
    """`value` when it is a valid W3C traceparent, else "" (the one check, for both doors)."""
    if len(value) > 55:
        return ""
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None or m[1] == "ff" or set(m[2]) == {"0"} or set(m[3]) == {"0"}:
        return ""
    return m[0]


CONSISTENCY = ("linearizable", "stale")  # values of a request's "c" field
_FIELDS = frozenset({"v", "id", "op", "b", "h", "q", "c"})

def parse_request(obj: Any) -> Request:
    """Shape-check a decoded request map. Raises BadRequest (with the request id if readable)."""
    if not isinstance(obj, dict):
        raise BadRequest("a request must be a CBOR map")
    # `type(x) is int`, not isinstance: it also refuses bool, an int subclass in Python and a
    # different type on the wire.
    rid = obj.get("id")
    if type(rid) is not int or not 0 < rid < 2**63:
        raise BadRequest("request id 'id' must be a positive 64-bit integer")
    if not obj.keys() <= _FIELDS:
        unknown = set(obj) - _FIELDS
        raise BadRequest(f"unknown request field(s): {sorted(map(str, unknown))}",
                         request_id=rid)
    v, op = obj.get("v"), obj.get("op")
    if type(v) is not int:
        raise BadRequest("protocol version 'v' must be an integer", request_id=rid)
    if type(op) is not int:
        raise BadRequest("opcode 'op' must be an integer", request_id=rid)
    body = obj.get("b", {})
    headers = obj.get("h", {})
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise BadRequest(f"headers 'h' must be a map of at most {MAX_HEADERS} entries",
                         request_id=rid)
    for k, val in headers.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise BadRequest("header names and values must be strings", request_id=rid)
        if len(val) > MAX_HEADER_VALUE:
            raise TooLarge(f"header {k!r} longer than {MAX_HEADER_VALUE}", request_id=rid)
    seq = obj.get("q", 0)
    if type(seq) is not int or not 0 <= seq < 2**63:
        raise BadRequest("sequence number 'q' must be a non-negative integer", request_id=rid)
    consistency = obj.get("c", "linearizable")
    if consistency not in CONSISTENCY:
        raise BadRequest(f"consistency 'c' must be one of {list(CONSISTENCY)}", request_id=rid)
    trace = ""
    if TRACEPARENT in headers:  # a trace context, not an identity assertion: set apart
        headers = dict(headers)
        trace = valid_traceparent(headers.pop(TRACEPARENT))
    return Request(v, rid, op, body, headers, seq, consistency == "stale", trace)


def ok_response(request_id: int, result: Any) -> dict[str, Any]:
    return {"id": request_id, "s": int(Status.OK), "r": result}


def error_response(request_id: int, err: LoomError) -> dict[str, Any]:
    details = {k: v for k, v in err.details.items() if k != "request_id"}
    e: dict[str, Any] = {"code": err.status.name, "msg": err.message, **details}
    return {"id": request_id, "s": int(err.status), "e": e}


def push_frame(subscription_id: int, payload: Any) -> dict[str, Any]:
    return {"id": subscription_id, "s": int(Status.OK), "p": payload}
