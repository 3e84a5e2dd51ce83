"""What a leader knows about each follower's log, and the flow control of replication.

PROBE: one AppendEntries at a time (`probe_sent` pauses until a response or heartbeat) while
  searching for the match point after a rejection.
REPLICATE: optimistic pipelining; `next` runs ahead of `match`, at most `max_inflight`
  AppendEntries outstanding (their last indexes are in `inflight`, freed by acknowledgements).
SNAPSHOT: the follower is behind the log's compaction point; the snapshot `snap_index` is
  streamed in chunks, at most `snapshot_window` unacknowledged, from byte `snap_acked`.

Invariant: match < next. `match` never decreases within one leadership term, except when the
follower answers that it is joining (it lost its disk and restarted empty): `forget_match`.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class PState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = ("inflight", "joining", "match", "max_inflight", "next", "probe_sent",
                 "recent_active", "snap_acked", "snap_index", "snap_sent", "state")

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PState.PROBE
        self.probe_sent = False
        self.recent_active = False  # heard from since the last check-quorum round
        # the follower's last answer said it started empty and has not caught up: its
        # acknowledgements are never counted (see "Joining" in loom.raft.core)
        self.joining = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.snap_index = 0
        self.snap_acked = 0  # bytes acknowledged
        self.snap_sent = 0  # bytes sent

    def become_probe(self) -> None:
        if self.state is PState.SNAPSHOT:
            self.next = max(self.match + 1, self.snap_index + 1)
        else:
            self.next = self.match + 1
        self.state = PState.PROBE
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = PState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()

    def become_snapshot(self, snap_index: int) -> None:
        self.state = PState.SNAPSHOT
        self.snap_index = snap_index
        self.snap_acked = self.snap_sent = 0
        self.inflight.clear()

    def paused(self) -> bool:
        if self.state is PState.PROBE:
            return self.probe_sent
        if self.state is PState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent_entries(self, last: int, count: int) -> None:
        """Record an AppendEntries carrying `count` entries ending at `last`."""
        if self.state is PState.REPLICATE:
            if count:
                self.next = last + 1
                self.inflight.append(last)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to `index`. True if it moved `match`."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def forget_match(self, hint: int) -> None:
        """The follower lost its disk: what it acknowledged before is gone. Probe from `hint`."""
        self.match = min(self.match, hint)
        self.become_probe()
        self.next = min(self.next, hint + 1)

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """A rejection of the append whose previous index was `rejected`. False if stale."""
        if self.state is PState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True
