"""What the core hands the driver (`Ready`), the one rule for carrying it out (`plan`), and the
small results of the core's input calls.

Ready contract. For each Ready, in this order:
  0. write `snapshot_chunks` (the bytes of a snapshot being received; not necessarily synced);
  1. persist `snapshot` (if any; it replaces the log up to its index), then `entries` (an entry
     at index i replaces any stored entry at i or above), then `hard_state`;
  2. if `must_sync`, make all of that durable (fsync) before going on;
  3. send `messages` (they may depend on steps 1-2: a vote, an append acknowledgement);
  4. install `snapshot` into the state machine, apply `committed_entries` in order;
  5. answer each `read_states` request once the applied index is >= its index;
  6. call `advance(ready)`. No other core call may happen between `ready()` and `advance()`,
     except `snapshot_stored` for this Ready's snapshot (where its bytes are read from now),
     which must happen before `advance`.

Two overlaps are allowed, and `plan()` is the only place that decides them; every driver (the
node's, the simulator's, the interaction scripts') calls it, so the simulator checks the core
under the ordering loomd runs:
  a. Replicate while writing: a leader's AppendEntries and Heartbeats (`ReadyPlan.early`) may
     leave before step 1 (Raft thesis section 10.2.1; etcd raft's doc.go: "messages may be sent
     while entries from the same batch are being persisted"). They carry only entries the leader
     holds and a commit index counted from persisted copies (the core counts the leader's own
     copy only in `advance`, after its write), and their term and vote are already durable: in
     a Ready whose hard state changes the term or the vote, nothing goes early.
  b. Apply while writing: without a snapshot (`ReadyPlan.apply_first`), step 4 may come before
     step 1. A committed entry is durable on a majority already, so applying it (and answering
     its caller) need not wait for this node's fsync of newer entries. A Ready with a snapshot
     is carried out strictly in order: the snapshot replaces the log and the state, and must be
     durable before it is installed.
Everything else waits for the sync: votes and their refusals, append and snapshot responses,
ReadIndex answers, TimeoutNow. Sending one of those early is the planted `ack_before_sync` bug
the simulator must catch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from loom.raft.messages import AppendEntries, Heartbeat, Message
from loom.raft.types import Entry, HardState, SnapshotMeta

_REPLICATION = (AppendEntries, Heartbeat)  # only a leader sends these


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
class SnapshotChunk:
    """Bytes of a snapshot being received from a leader, for the driver to write down (a
    node: to a temp file, loom/node/snapshots.py; the simulator: in memory, `BytesSink`).
    The core hands each transfer's bytes over exactly once, in order and contiguous: a chunk
    at `offset` 0 starts a transfer (whatever an unfinished earlier one wrote is dropped);
    every later chunk continues it, with the same `meta` and `total`, where the previous
    one ended. The core never holds the bytes beyond the Ready that carries them. Writing
    them need not be durable: the install (`Ready.snapshot`) is, and a node that restarts
    mid-transfer starts it over."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    total: int  # the whole snapshot's size, as the leader announced it


class SnapshotSource(Protocol):
    """The bytes of the core's last snapshot, read when a follower needs them. The core keeps
    only this and the snapshot's meta: a node's source reads the snapshot file chunk by chunk
    (loom/node/snapshots.py), so no snapshot stays in memory longer than sending it needs."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes from `offset` (fewer only at the end)."""
        ...


class BytesSource:
    """A snapshot already in memory (the simulator's)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]


class BytesSink:
    """A received snapshot assembled in memory from the Ready's chunks: the simulator's and
    the interaction scripts' (a node writes them to a file instead)."""

    def __init__(self) -> None:
        self._meta: SnapshotMeta | None = None
        self._buf = bytearray()
        self._total = 0

    def write(self, chunk: SnapshotChunk) -> None:
        if chunk.offset == 0:
            self._meta, self._buf, self._total = chunk.meta, bytearray(), chunk.total
        elif (chunk.meta, chunk.total, chunk.offset) != (self._meta, self._total,
                                                          len(self._buf)):
            raise ValueError(f"snapshot chunk at {chunk.offset} does not continue the transfer")
        self._buf += chunk.data

    def take(self, meta: SnapshotMeta) -> bytes:
        """The whole snapshot `meta`, once every chunk of it was written."""
        if meta != self._meta or len(self._buf) != self._total:
            raise ValueError(f"snapshot {meta.index}/{meta.term} was not received whole")
        data = bytes(self._buf)
        self._meta, self._buf = None, bytearray()
        return data


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
    # install the snapshot whose bytes this Ready's and earlier Readys' `snapshot_chunks`
    # delivered (all of them, `total` bytes): durably, before the messages, then into the
    # state machine; and tell the core where it is stored (`RaftCore.snapshot_stored`)
    snapshot: SnapshotMeta | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    snapshot_chunks: tuple[SnapshotChunk, ...] = ()  # received bytes, to write before messages


@dataclass(frozen=True, slots=True)
class ReadyPlan:
    """How one Ready may be carried out (see the contract above)."""

    early: tuple[Message, ...]  # may be sent before the Ready is persisted
    late: tuple[Message, ...]  # sent only once it is persisted (and synced if must_sync)
    apply_first: bool  # committed entries may be applied before the Ready is persisted


def plan(rd: Ready, synced: HardState) -> ReadyPlan:
    """The allowed overlaps for `rd`, given `synced`: the hard state last made durable (its
    commit index does not matter here, only its term and vote)."""
    apply_first = rd.snapshot is None
    msgs = rd.messages
    hs = rd.hard_state
    if not msgs or (hs is not None and (hs.term != synced.term or hs.vote != synced.vote)):
        return ReadyPlan((), msgs, apply_first)
    early = tuple(m for m in msgs if isinstance(m, _REPLICATION))
    if not early:
        return ReadyPlan((), msgs, apply_first)
    if len(early) == len(msgs):
        return ReadyPlan(msgs, (), apply_first)
    late = tuple(m for m in msgs if not isinstance(m, _REPLICATION))
    return ReadyPlan(early, late, apply_first)
