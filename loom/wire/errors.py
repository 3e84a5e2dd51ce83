"""Status codes and the one exception type per code.

Every answer on the wire carries a `Status`. The same enum is used by the server (to answer)
and by the client (to raise the matching exception), so this file owns the meaning of each code.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class Status(IntEnum):
    OK = 0
    BAD_REQUEST = 1  # malformed or ill-typed request; nothing was executed
    UNAUTHENTICATED = 2  # identity missing or not acceptable (e.g. spoofed gateway fields)
    FORBIDDEN = 3  # identity known, the ACL denies it; nothing was executed
    NOT_FOUND = 4
    CONFLICT = 5  # a precondition failed (compare-and-set, not owner, already exists)
    TOO_LARGE = 6  # frame, value or batch over a configured limit
    BUSY = 7  # overloaded: retry later (carries retry_after_ms)
    TIMEOUT = 8  # the server gave up waiting; a write may or may not have been applied
    UNAVAILABLE = 9  # no quorum, shutting down, not ready
    NOT_LEADER = 10  # carries the leader's id and client address when known
    INTERNAL = 11  # a bug; the request's effect is unknown
    UNSUPPORTED_VERSION = 12  # protocol version negotiation failed
    LIMIT_EXCEEDED = 13  # a structure limit: queue full, counter overflow, too many entries


class LoomError(Exception):
    """Base of every error a Loom server can answer with."""

    status: ClassVar[Status] = Status.INTERNAL

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.status.name)
        self.message = message or self.status.name
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.status.name, "msg": self.message}
        err.update(self.details)
        return err


class BadRequest(LoomError):
    status = Status.BAD_REQUEST


class Unauthenticated(LoomError):
    status = Status.UNAUTHENTICATED


class Forbidden(LoomError):
    status = Status.FORBIDDEN


class NotFound(LoomError):
    status = Status.NOT_FOUND


class Conflict(LoomError):
    status = Status.CONFLICT


class TooLarge(LoomError):
    status = Status.TOO_LARGE


class Busy(LoomError):
    status = Status.BUSY


class Timeout(LoomError):
    status = Status.TIMEOUT


class Unavailable(LoomError):
    status = Status.UNAVAILABLE


class NotLeader(LoomError):
    status = Status.NOT_LEADER


class Internal(LoomError):
    status = Status.INTERNAL


class UnsupportedVersion(LoomError):
    status = Status.UNSUPPORTED_VERSION


class LimitExceeded(LoomError):
    status = Status.LIMIT_EXCEEDED


ERROR_TYPES: dict[Status, type[LoomError]] = {
    cls.status: cls
    for cls in (
        BadRequest, Unauthenticated, Forbidden, NotFound, Conflict, TooLarge, Busy, Timeout,
        Unavailable, NotLeader, Internal, UnsupportedVersion, LimitExceeded,
    )
}
assert set(ERROR_TYPES) == set(Status) - {Status.OK}, "every status needs its exception type"


def error_from_wire(status: int, err: Any) -> LoomError:
    """Build the exception for a non-OK answer (client side). Never trusts the shape blindly."""
    try:
        code = Status(status)
    except ValueError:
        return Internal(f"server answered unknown status {status!r}")
    cls = ERROR_TYPES.get(code, Internal)
    if not isinstance(err, dict):
        return cls(code.name)
    msg = err.get("msg")
    details = {k: v for k, v in err.items() if k not in ("code", "msg") and isinstance(k, str)}
    return cls(msg if isinstance(msg, str) else code.name, **details)
