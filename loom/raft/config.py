"""Configuration of one Raft core. Every limit the core enforces is a field here.

Time is measured in ticks (the driver calls `tick()` at a fixed interval from a monotonic
clock). The planted bugs of the simulator's mutation check are not configuration: they are
subclasses of the core that live in `loom.sim.mutants`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: str
    election_tick_min: int = 10  # also: how long a follower honours a live leader
    election_tick_max: int = 20  # randomized timeout drawn from [min, max)
    heartbeat_tick: int = 2
    max_entries_per_append: int = 64
    max_bytes_per_append: int = 1 << 20
    max_inflight: int = 16  # AppendEntries in flight per follower while replicating
    max_uncommitted_bytes: int = 64 << 20  # proposals beyond this are refused with Busy
    max_committed_bytes_per_ready: int = 4 << 20
    max_read_requests: int = 4096  # pending ReadIndex requests on a leader
    check_quorum: bool = True
    pre_vote: bool = True
    lease_reads: bool = False
    # campaign soon after the transport proves the leader's process gone (core.peer_gone);
    # effective only with pre_vote and without lease_reads
    fast_failover: bool = True
    lease_drift_ticks: int = 2  # lease = election_tick_min - drift (and tick granularity)
    snapshot_chunk_bytes: int = 64 << 10
    snapshot_window: int = 4  # snapshot chunks in flight per follower
    trailing_entries: int = 128  # entries kept behind a snapshot for slow followers
    # ... and at most this many bytes of them: the trailing entries are held in memory, and a
    # follower further behind is sent the snapshot (streamed from its file) instead
    trailing_bytes: int = 16 << 20
    # a snapshot a leader announces as larger is not taken (the driver writes what it
    # receives to disk: this bounds the disk, as it once bounded memory)
    max_snapshot_bytes: int = 64 << 30

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must be non-empty")
        if not 0 < self.heartbeat_tick < self.election_tick_min < self.election_tick_max:
            raise ValueError("need 0 < heartbeat_tick < election_tick_min < election_tick_max")
        if self.lease_reads and not (
            self.check_quorum and 0 < self.lease_drift_ticks < self.election_tick_min - 1
        ):
            raise ValueError("lease reads need check_quorum and 0 < drift < election_tick_min-1")
        for name in ("max_entries_per_append", "max_bytes_per_append", "max_inflight",
                     "max_uncommitted_bytes", "max_committed_bytes_per_ready",
                     "max_read_requests", "snapshot_chunk_bytes", "snapshot_window",
                     "max_snapshot_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.trailing_entries < 0 or self.trailing_bytes < 0:
            raise ValueError("trailing_entries and trailing_bytes must be >= 0")
