"""What the core hands the driver (`Ready`) and the small results of its input calls.

Ready contract, in the order the driver must act:
  1. persist `snapshot` (if any; replaces the log up to its index), then `entries` (an entry at
     index i replaces any stored entry at i or above), then `hard_state`;
  2. if `must_sync`, make all of that durable (fsync) before going on;
  3. send `messages` (they may depend on step 1-2: a vote, an append acknowledgement);
  4. install `snapshot` into the state machine, apply `committed_entries` in order;
  5. answer each `read_states` request once the applied index is >= its index;
  6. call `advance(ready)`. No other core call may happen between `ready()` and `advance()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from loom.raft.messages import Message
from loom.raft.types import Entry, HardState, SnapshotMeta


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    leader: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    ctx: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class NotLeader:
    """Returned by propose/read_index on a node that cannot serve the request."""

    leader: str | None


@dataclass(frozen=True, slots=True)
class Busy:
    """Returned when a bound is reached (uncommitted log, pending reads, transfer)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    must_sync: bool
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
