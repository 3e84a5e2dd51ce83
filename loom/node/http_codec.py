"""HTTP <-> message conversions for the HTTP door (pure: no I/O, no node).

- JSON bodies in: strict (duplicate members, NaN/Infinity and non-object bodies refused);
  bytes fields of the catalog schema are base64 strings, converted here by the schema, so a
  `/v1/call` body is exactly the binary protocol's body once decoded.
- JSON replies out: bytes become base64 strings (standard alphabet, padded), everywhere.
- One HTTP status per error code (`STATUS_OF`), as docs/http.md lists them.
- The JSON and problem+json answers; the header values the door reads itself:
  `Idempotency-Key` (-> a dedupe client id) and W3C `traceparent` (-> the audit record's
  request id).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from loom.http import Problem, Request, Response
from loom.state.dedupe import FINGERPRINTED_SCOPE
from loom.wire import catalog
from loom.wire.catalog import MessageType
from loom.wire.codec import valid_traceparent
from loom.wire.errors import BadRequest, LoomError, Status
from loom.wire.schema import Field, Kind

__all__ = [
    "JSON",
    "OCTETS",
    "STATUS_OF",
    "check_json",
    "error_response",
    "idempotency_client",
    "json_response",
    "jsonable",
    "media_type",
    "one_header",
    "parse_json_object",
    "problem_response",
    "reply_json",
    "retry_after_s",
    "trace_id",
    "with_bytes",
]

# One HTTP status per error code. NOT_LEADER is a 307 to the leader's HTTP address when it is
# known (see loom/node/http.py), else this 503.
STATUS_OF: dict[Status, int] = {
    Status.BAD_REQUEST: 400, Status.UNAUTHENTICATED: 401, Status.FORBIDDEN: 403,
    Status.NOT_FOUND: 404, Status.CONFLICT: 409, Status.TOO_LARGE: 413, Status.BUSY: 429,
    Status.TIMEOUT: 504, Status.UNAVAILABLE: 503, Status.NOT_LEADER: 503, Status.INTERNAL: 500,
    Status.UNSUPPORTED_VERSION: 400, Status.LIMIT_EXCEEDED: 409,
}
assert set(STATUS_OF) == set(Status) - {Status.OK}

JSON = "application/json"
OCTETS = "application/octet-stream"
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BadRequest(f"JSON member {k[:40]!r} is repeated")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise BadRequest(f"JSON {name} is not a number Loom accepts")


def check_json(data: bytes) -> Any:
    """One JSON value, strictly: refused (BadRequest) for invalid UTF-8 or JSON, a repeated
    member, NaN or Infinity, nesting too deep."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(f"the body is not valid JSON: {str(e)[:80]}") from None
    return obj


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (see `check_json`)."""
    obj = check_json(data)
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object")
    return obj


def _b64(v: Any, where: str) -> Any:
    if not isinstance(v, str):
        return v  # the catalog's validation names the wrong type
    try:
        return base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BadRequest(f"{where} must be base64 (standard alphabet, padded)") from None


def _field_bytes(f: Field, v: Any, where: str) -> Any:
    if f.kind is Kind.BYTES:
        return _b64(v, where)
    if f.kind is Kind.VALUES and isinstance(v, list):
        return [_b64(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if f.kind is Kind.ENTRIES and isinstance(v, dict):
        return {k: _b64(x, f"{where}.{k}") for k, x in v.items()}
    if f.kind is Kind.OPS and isinstance(v, list):
        out = []
        for item in v:
            inner = (catalog.BY_NAME.get(item["op"])
                     if isinstance(item, dict) and isinstance(item.get("op"), str) else None)
            if inner is not None and isinstance(item.get("b"), dict):
                out.append({**item, "b": with_bytes(inner, item["b"])})
            else:
                out.append(item)
        return out
    return v


def with_bytes(mt: MessageType, body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` (from JSON) with its bytes fields decoded from base64, by `mt`'s schema.
    Unknown fields are left for the catalog's validation to refuse."""
    out = dict(body)
    for name, v in body.items():
        f = mt.schema.get(name)
        if f is not None:
            out[name] = _field_bytes(f, v, f"{mt.name}.{name}")
    return out


def jsonable(v: Any) -> Any:
    """A result as JSON can carry it: bytes -> base64 text, tuples -> lists."""
    if isinstance(v, bytes | bytearray):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {(jsonable(k) if isinstance(k, bytes) else k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


def reply_json(obj: Any) -> bytes:
    # ensure_ascii: text that quotes client input can never put raw control bytes in a body.
    return json.dumps(jsonable(obj), ensure_ascii=True, separators=(",", ":"),
                      allow_nan=False).encode("ascii")


def retry_after_s(details: Mapping[str, Any]) -> int:
    """Retry-After (whole seconds, at least 1) from an error's retry_after_ms."""
    ms = details.get("retry_after_ms")
    if isinstance(ms, int) and not isinstance(ms, bool) and ms > 0:
        return max(1, math.ceil(ms / 1000))
    return 1


def idempotency_client(key: bytes) -> str:
    """The dedupe client id an Idempotency-Key stands for (with sequence number 1).

    The dispatcher scopes it by principal, so two callers never share a key's outcome; the
    key itself never reaches the replicated state (only its hash does). The dispatcher also
    fingerprints such a write (loom/state/dedupe.py), so the key reused for another request
    is refused (422, loom/node/http.py) rather than answered the first outcome."""
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not IDEMPOTENCY_KEY_RE.fullmatch(text):
        raise BadRequest("Idempotency-Key must be 1..255 visible ASCII characters")
    return FINGERPRINTED_SCOPE + hashlib.sha256(key).hexdigest()[:32]


def trace_id(value: bytes | None) -> str:
    """A valid W3C traceparent as text, else "" (an invalid one is ignored, as the W3C Trace
    Context recommendation says: the request is served, without a request id)."""
    if value is None:
        return ""
    return valid_traceparent(value.decode("latin-1"))


# -- requests and answers ----------------------------------------------------------------
def one_header(request: Request, name: str, *, quiet: bool = False) -> bytes | None:
    """A header that may appear once; a repeat is refused (or, `quiet`, taken as absent)."""
    try:
        return request.header(name)
    except ValueError:
        if quiet:
            return None
        raise BadRequest(f"header {name} is repeated") from None


def media_type(raw: bytes | None) -> str:
    """The media type of a Content-Type value, lower-cased, without parameters ("": none)."""
    if raw is None:
        return ""
    return raw.split(b";", 1)[0].strip().lower().decode("latin-1")


def json_response(status: int, obj: Any) -> Response:
    return Response(status, [("content-type", JSON)], reply_json(obj))


def error_response(status: Status, msg: str, details: dict[str, Any], http: int = 0
                   ) -> Response:
    """The problem+json answer of an error code (`http` overrides its status)."""
    http = http or STATUS_OF[status]
    headers = [("retry-after", str(retry_after_s(details)))] if http in (429, 503) else []
    extra = {"code": status.name, **jsonable(details)}
    for k in ("type", "title", "status", "detail", "instance"):
        extra.pop(k, None)
    return Problem(http, title=status.name, detail=msg, type=f"urn:loom:error:{status.name}",
                   extra=extra).response(headers)


def problem_response(e: LoomError, http: int | None = None,
             headers: list[tuple[str, str]] | None = None) -> Response:
    if http is None:
        return error_response(e.status, e.message, {k: v for k, v in e.details.items()
                                           if k != "request_id"})
    return Problem(http, detail=e.message, extra={"code": e.status.name}).response(headers or [])
