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

import io
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


def decode_payload(payload: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Strictly decode one CBOR item that must fill `payload` exactly."""
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
    # A correlation id the transport vouches for the format of (HTTP: a W3C traceparent); the
    # audit record carries it as `request_id`, beside (never instead of) the client id.
    trace: str = ""


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
    return Request(v, rid, op, body, headers, seq, consistency == "stale")


def ok_response(request_id: int, result: Any) -> dict[str, Any]:
    return {"id": request_id, "s": int(Status.OK), "r": result}


def error_response(request_id: int, err: LoomError) -> dict[str, Any]:
    details = {k: v for k, v in err.details.items() if k != "request_id"}
    e: dict[str, Any] = {"code": err.status.name, "msg": err.message, **details}
    return {"id": request_id, "s": int(err.status), "e": e}


def push_frame(subscription_id: int, payload: Any) -> dict[str, Any]:
    return {"id": subscription_id, "s": int(Status.OK), "p": payload}
