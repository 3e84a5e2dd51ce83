"""Audit records (the pure part: shape, serialization, which requests, which lane).

Invariants:
- A record never holds a value, token, password or any body field other than the structure
  name and the keys touched: `record_for` takes the validated body and extracts only those, with
  the same `keys_touched` the ACL and the state machine use.
- `client_id` is the server-assigned connection id ("c42"); nothing the client sends (HELLO
  client_id, request ids, forwarding headers) can replace it.
- `to_json_line` escapes every control and non-ASCII character (json with ensure_ascii), so a
  key or user name can never break a line or forge a record.
- `ts`, `node` and the per-node `seq` are added by the pipeline (loom/node/audit.py) at emit
  time, which also reports dropped sequence numbers in-band on the next record.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from loom.wire.catalog import Access, MessageType, keys_touched
from loom.wire.errors import Status

__all__ = [
    "AuditRecord",
    "format_ts",
    "lane",
    "record_for",
    "result_of",
    "should_audit",
]

MAX_FIELD = 256  # user-controlled strings (keys, principals, reasons) are cut to this
PRIORITY_RESULTS = frozenset({"denied", "unauthenticated"})
Lane = Literal["priority", "data"]


def format_ts(epoch_s: float) -> str:
    """RFC 3339, UTC, millisecond precision: 2024-05-01T12:00:00.123Z."""
    t = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _cut(s: str | None) -> str | None:
    if s is None or len(s) <= MAX_FIELD:
        return s
    return s[:MAX_FIELD] + "..."


def result_of(status: Status) -> str:
    """The audit `result` for an answer: ok, denied, unauthenticated, unknown, or the code.

    TIMEOUT is "unknown": the write may have been committed after the server gave up waiting.
    """
    if status is Status.OK:
        return "ok"
    if status is Status.FORBIDDEN:
        return "denied"
    if status is Status.TIMEOUT:
        return "unknown"
    return status.name.lower()


@dataclass(slots=True)  # not frozen: one is built per write, and frozen init costs 4x
class AuditRecord:
    client_id: str
    principal: str
    roles: tuple[str, ...]
    via_gateway: str | None
    command: str
    structure: str | None
    key: str | None  # the first key touched
    key_count: int  # how many keys the request touched
    result: str
    duration_ms: float
    reason: str | None = None  # why it was denied / refused
    admin: bool = False  # the command administers the cluster (priority lane)
    # A batch refused because of one member: its index in `ops` and its type (`structure` and
    # `key` are then that member's).
    op_index: int | None = None
    op: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "event": "request", "client_id": self.client_id, "principal": _cut(self.principal),
            "roles": list(self.roles), "via_gateway": self.via_gateway,
            "command": self.command, "structure": self.structure, "key": _cut(self.key),
            "key_count": self.key_count, "result": self.result,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.reason is not None:
            d["reason"] = _cut(self.reason)
        if self.op_index is not None:
            d["op_index"], d["op"] = self.op_index, self.op
        return d

    def to_json_line(self) -> str:
        return _dumps(self.to_dict())


def _dumps(d: Mapping[str, Any]) -> str:
    # ensure_ascii escapes every control character and all non-ASCII (U+2028 included).
    return json.dumps(d, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def record_for(
    *,
    client_id: str,
    principal: str,
    roles: Sequence[str],
    via_gateway: str | None,
    mt: MessageType | None,
    body: Mapping[str, Any] | None,
    result: str,
    duration_ms: float,
    reason: str | None = None,
    command: str | None = None,
) -> AuditRecord:
    """Build a record from a (validated) request; values never leave the body."""
    structure = None
    keys: list[str] = []
    if mt is not None and body is not None:
        s = body.get("name") if mt.has_structure else None
        structure = s if isinstance(s, str) else None
        try:
            keys = [k for k in keys_touched(mt, body) if isinstance(k, str)]
        except (KeyError, TypeError):
            keys = []
    return AuditRecord(
        client_id=client_id, principal=principal,
        roles=tuple(roles), via_gateway=via_gateway,
        command=mt.name if mt is not None else (command or "UNKNOWN"),
        structure=structure, key=keys[0] if keys else None, key_count=len(keys),
        result=result, duration_ms=duration_ms, reason=reason,
        admin=mt is not None and mt.access is Access.ADMIN,
    )


def should_audit(mt: MessageType | None, result: str, *, audit_reads: bool = False) -> bool:
    """Every WRITE/ADMIN request, every refusal of identity or permission, every unknown type;
    successful (and otherwise failed) reads and public types only with audit_reads."""
    if result in PRIORITY_RESULTS or mt is None:
        return True
    if mt.access in (Access.WRITE, Access.ADMIN):
        return True
    return audit_reads


def lane(record: AuditRecord) -> Lane:
    """Denials, authentication failures and admin commands take the priority lane."""
    if record.result in PRIORITY_RESULTS or record.admin:
        return "priority"
    return "data"
