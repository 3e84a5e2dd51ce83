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

from loom.wire.errors import ERROR_TYPES, LoomError, Status


@dataclass(frozen=True, slots=True)
class Command:
    op: str  # catalog NAME
    body: dict[str, Any]  # already validated against the catalog schema
    time_ms: int  # proposer's wall clock, ms since the epoch
    client_id: str = ""  # deduplication scope: "<principal>/<client id from HELLO>"; "" = none
    seq: int = 0  # per-client sequence number; 0 = not deduplicated
    principal: str = ""  # who proposed it: owner of the sessions it opens; "" = internal
    acl_version: int = -1  # the ACL version it was authorized under; -1 = not checked

    def encode(self) -> bytes:
        fields = [self.op, self.body, self.time_ms, self.client_id, self.seq, self.principal]
        if self.acl_version >= 0:
            fields.append(self.acl_version)
        return cbor2.dumps(fields)

    @staticmethod
    def decode(data: bytes) -> Command:
        """Also reads the 5-element form written before commands carried a principal and the
        6-element form of internal commands (and of writes logged before they carried the
        ACL version)."""
        fields = cbor2.loads(data)
        if not isinstance(fields, list) or len(fields) not in (5, 6, 7):
            raise ValueError("not an encoded Command")
        op, body, time_ms, client_id, seq, *rest = fields
        return Command(op, body, time_ms, client_id, seq, rest[0] if rest else "",
                       rest[1] if len(rest) > 1 else -1)


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
