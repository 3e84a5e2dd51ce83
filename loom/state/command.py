"""What the log carries to the state machine, and what the state machine answers.

A `Command` is one replicated entry's payload. Everything `apply` may depend on is inside it:
the operation, its validated body, the proposer's clock (`time_ms`: the *only* time apply ever
sees, so every replica computes the same TTLs, lease expiries and session expiries), the
deduplication identity (`client_id`, `seq`) that makes client retries exactly-once, and the
authenticated `principal` the command runs as (owner of the sessions it opens; the only one
allowed to use them). "" is internal or legacy and matches only sessions opened with "".
A client's write also carries `acl_version`, the version of the replicated ACL policy it was
authorized under: apply refuses it, changing nothing, when the policy at its log position is
another one (`StateMachine.apply`, `POLICY_CHANGED`); -1 (internal commands) is never checked.

`Outcome` is the answer. `wait=True` means "a waiting operation (QUEUE_POLL, LOCK_LOCK,
SEMAPHORE_ACQUIRE, LATCH_AWAIT) found nothing yet and changed nothing": the node layer waits for
the structure to change and proposes again until the caller's deadline. Wait outcomes are never
stored in the deduplication table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from loom.wire.catalog import BY_NAME, validate_body
from loom.wire.errors import ERROR_TYPES, BadRequest, LoomError, Status


@dataclass(frozen=True, slots=True)
class Command:
    op: str  # catalog NAME
    body: dict[str, Any]  # already validated against the catalog schema
    time_ms: int  # proposer's wall clock, ms since the epoch
    client_id: str = ""  # deduplication scope: "<principal>/<client id from HELLO>"; "" = none
    seq: int = 0  # per-client sequence number; 0 = not deduplicated
    principal: str = ""  # who proposed it: owner of the sessions it opens; "" = internal
    acl_version: int = -1  # the ACL version it was authorized under; -1 = not checked
    # what the deduplicated request was (loom/state/dedupe.py `request_fingerprint`), so that a
    # reused dedupe identity with another request is refused; b"" = not checked
    fingerprint: bytes = b""

    def encode(self) -> bytes:
        fields: list[Any] = [self.op, self.body, self.time_ms, self.client_id, self.seq,
                             self.principal]
        if self.acl_version >= 0 or self.fingerprint:
            fields.append(self.acl_version)
        if self.fingerprint:
            fields.append(self.fingerprint)
        return cbor2.dumps(fields)

    @staticmethod
    def decode(data: bytes) -> Command:
        """Also reads the 5-element form written before commands carried a principal and the
        6-element form of internal commands (and of writes logged before they carried the
        ACL version); the 8-element form carries a request fingerprint.

        Every field's type is checked here, exactly (an int is never a bool): a compiled
        build (loom/buildinfo.py) checks the declared types when the Command is built and a
        pure one does not, so without this check the two builds would part ways on a
        malformed entry. Both raise the same ValueError instead. The body's contents are
        checked by `checked_body`, when the command is applied."""
        fields = cbor2.loads(data)
        if not isinstance(fields, list) or len(fields) not in (5, 6, 7, 8):
            raise ValueError("not an encoded Command")
        op, body, time_ms, client_id, seq, *rest = fields
        principal = rest[0] if rest else ""
        acl_version = rest[1] if len(rest) > 1 else -1
        fingerprint = rest[2] if len(rest) > 2 else b""
        if not (type(op) is str and type(body) is dict and type(time_ms) is int
                and type(client_id) is str and type(seq) is int and type(principal) is str
                and type(acl_version) is int and type(fingerprint) is bytes):
            raise ValueError("not an encoded Command: a field of the wrong type")
        return Command(op, body, time_ms, client_id, seq, principal, acl_version, fingerprint)


def checked_body(op: str, body: object) -> dict[str, Any]:
    """The body `apply` and `read` hand to the operation: validated against the catalog's
    schema of `op` and normalised, as the dispatcher does before proposing
    (catalog.validate_body; idempotent on a body it produced). A body from the log that fails
    it raises BadRequest, on every replica alike.

    This is the boundary that keeps the two builds in step: compiled operations check their
    declared types (a str where a name is expected, an int for a TTL) and would raise where
    the pure ones carry on, or fail with another message; past this check, every value has
    the type both builds expect. Ops outside the catalog (MEMBER_ADDRESS, internal) check
    their own body's contents; here it must be a map with string keys."""
    # `body: object`, not the declared dict[str, Any]: a compiled build would check each key
    # as a str while iterating, and raise where this says BadRequest.
    if type(body) is not dict or not all(type(k) is str for k in body):
        raise BadRequest(f"{op}: body must be a map with string keys")
    mt = BY_NAME.get(op)
    if mt is None:
        return body
    return validate_body(mt, body)


# The `reason` of the FORBIDDEN outcome of a write refused at apply because the ACL policy at
# its log position is not the one it was authorized under. The node that proposed it decides it
# again under the policy now in force (loom/node/dispatcher.py): FORBIDDEN if that refuses it,
# else it is proposed anew. Nothing of it was applied, on any replica.
POLICY_CHANGED = "policy_changed"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status = Status.OK
    value: Any = None  # the result when OK
    message: str = ""  # the error message otherwise
    details: dict[str, Any] = field(default_factory=dict)
    wait: bool = False

    @staticmethod
    def ok(value: Any = None) -> Outcome:
        return Outcome(Status.OK, value)

    @staticmethod
    def waiting() -> Outcome:
        return Outcome(Status.OK, None, wait=True)

    @staticmethod
    def from_error(err: LoomError) -> Outcome:
        return Outcome(err.status, None, err.message, dict(err.details))

    def raise_for_status(self) -> Any:
        """The value if OK, else raise the matching LoomError."""
        if self.status is Status.OK:
            return self.value
        raise ERROR_TYPES[self.status](self.message, **self.details)
