"""The seam between the request path and the log: `submit` (a callback) or `propose`/`read`.

The dispatcher only ever calls this interface; `loom/node/raftdriver.py` implements it with the
Raft driver (a single node is a cluster of one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine
from loom.wire.errors import LoomError

StructureId = tuple[str, str]


# Called exactly once per submitted command: (outcome, None), or (None, error) when it was
# refused, timed out (outcome unknown for a write) or the node stopped first.
OnDone = Callable[[Outcome | None, LoomError | None], None]


class Replicator(Protocol):
    def submit(self, cmd: Command, *, read: bool, on_done: OnDone,
               stale: bool = False) -> None: ...
    async def propose(self, cmd: Command) -> Outcome: ...
    async def read(self, cmd: Command, *, stale: bool = False) -> Outcome: ...
    def state(self) -> StateMachine: ...
    def changed_event(self, structure: StructureId) -> trio.Event: ...
    def statistics(self) -> LogStatistics: ...
    def cluster_status(self) -> dict[str, Any]: ...
    async def admin(self, what: str, **kw: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """The log driver's counters and position (NODE_STATS "log")."""

    node: str
    role: str  # follower, pre_candidate, candidate, leader
    term: int
    leader: str | None
    commit_index: int
    applied_index: int  # the state machine's (its commands only)
    last_index: int
    snapshot_index: int  # of the newest snapshot taken or installed
    proposals_pending: int  # writes proposed, waiting for their entry to apply here
    batches: int  # Ready batches that persisted entries
    entries_persisted: int
    entries_per_batch: float  # group commit at work: entries per persisted batch
    dropped_peer_messages: int  # peer messages dropped on a full inbox (Raft retries)
    snapshots_taken: int
    snapshots_forked: int  # of which serialised in a forked child
    snapshot_building_at: int | None  # index a child is serialising now, if any
    transfers_started: int  # leadership transfers this node began as leader
    leader_changes: int = 0  # times the known leader changed (to another node or to none)
    read_index_rounds: int = 0  # reads (batches of) confirmed by a heartbeat round, as leader
    lease_reads: int = 0  # reads (batches of) answered under the leader lease
    snapshots_sent: int = 0  # snapshot transfers this node started to a follower
    removed: str | None = None  # why this node stopped serving: it was removed from the cluster


@dataclass(frozen=True, slots=True)
class Applied:
    index: int
    cmd: Command
    outcome: Outcome
