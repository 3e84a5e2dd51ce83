"""A leader's linearizable reads: numbered heartbeat rounds, the reads waiting for them, and the
lease the rounds renew (etcd keeps the same in `read_only.go`). Pure bookkeeping: the core
sends the heartbeats and answers the reads this returns.

  * Round numbers only grow, across terms too, so an acknowledgement from an earlier term
    can never confirm a later round. A read taken at commit index i is confirmed by the first
    round numbered above the newest round sent before it (`add`), once a majority of the
    voters acknowledged that round or a later one (`confirm`).
  * A read that arrives before the leader committed an entry of its own term waits
    (`wait_for_commit`): until then the leader's commit index may be behind the cluster's.
  * The lease: a round acknowledged by a majority, sent at tick s, keeps those voters from
    electing anyone else until s + election_tick_min of their ticks; the leader trusts it
    for fewer ticks than that (`lease_valid`), and never again in a term once it handed
    leadership over (`lease_disabled`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from loom.raft.quorum import quorum_index


class PendingRead:
    __slots__ = ("ctx", "frm", "index", "seq")

    def __init__(self, seq: int, ctx: bytes, index: int, frm: str) -> None:
        self.seq, self.ctx, self.index, self.frm = seq, ctx, index, frm


class ReadRounds:
    def __init__(self) -> None:
        self.seq = 0  # the newest round sent
        # Ticks at which the recent rounds were sent: round `_base + i` at `_sent[i]`, so the
        # last is round `seq`. Oldest first; pruned from the left.
        self._sent: deque[int] = deque()
        self._base = 1
        self.acked: dict[str, int] = {}  # newest round each voter acknowledged
        # When each voter's newest acknowledgement arrived, as a running count: of two voters
        # that acknowledged the same round, the smaller count answered first.
        self._order: dict[str, int] = {}
        self._acks = 0
        self.lease_start: int | None = None  # tick the newest confirmed round was sent
        self.lease_disabled = False
        self._reads: list[PendingRead] = []
        self._before_commit: list[tuple[bytes, str]] = []

    def reset(self) -> None:
        """A new term or role: no round, read or lease carries over (round numbers do)."""
        self.lease_disabled = False
        self.lease_start = None
        self._sent.clear()
        self.acked = {}
        self._order = {}
        self._reads = []
        self._before_commit = []

    # -- reads --------------------------------------------------------------------------------
    def pending(self) -> tuple[int, int]:
        """(reads waiting for a round, reads waiting for the leader's first commit)."""
        return len(self._reads), len(self._before_commit)

    def wait_for_commit(self, ctx: bytes, frm: str) -> None:
        self._before_commit.append((ctx, frm))

    def take_waiting_for_commit(self) -> list[tuple[bytes, str]]:
        waiting, self._before_commit = self._before_commit, []
        return waiting

    def add(self, ctx: bytes, index: int, frm: str) -> None:
        """A read at commit index `index`, confirmed by the next round (`new_round`)."""
        self._reads.append(PendingRead(self.seq + 1, ctx, index, frm))

    # -- rounds -------------------------------------------------------------------------------
    def new_round(self, now: int, horizon: int) -> int:
        """Number a round sent at tick `now`; forget the send times of rounds sent before
        tick `horizon` (too old to renew a lease). Returns the round's number."""
        self.seq += 1
        sent = self._sent
        if not sent:
            self._base = self.seq
        sent.append(now)
        while sent[0] < horizon:  # stops at the round just appended at the latest
            sent.popleft()
            self._base += 1
        return self.seq

    def on_ack(self, voter: str, seq: int) -> bool:
        """A voter acknowledged round `seq`. True if that is newer than what it had."""
        if seq <= self.acked.get(voter, 0):
            return False
        self.acked[voter] = seq
        self._acks += 1
        self._order[voter] = self._acks
        return True

    def forget(self, voter: str) -> None:
        """`voter` left the configuration."""
        self.acked.pop(voter, None)
        self._order.pop(voter, None)

    def round_peers(self, voters: Sequence[str], me: str, counted: Callable[[str], bool],
                    count: int) -> list[str]:
        """The `count` other counted voters that acknowledged the newest round, first come
        first (then by id: the choice is deterministic)."""
        acked, order = self.acked, self._order
        peers = sorted((v for v in voters if v != me and counted(v)),
                       key=lambda v: (-acked.get(v, 0), order.get(v, 0), v))
        return peers[:count]

    def confirm(self, voters: Sequence[str], me: str, counted: Callable[[str], bool]
                ) -> list[PendingRead]:
        """Renew the lease from the newest round a majority acknowledged (the leader itself
        acknowledges every round it sends) and return the reads that round confirms."""
        seq = quorum_index(voters, lambda v: (
            self.seq if v == me else self.acked.get(v, 0) if counted(v) else 0))
        i = seq - self._base
        if 0 <= i < len(self._sent):
            start = self._sent[i]
            if self.lease_start is None or start > self.lease_start:
                self.lease_start = start
        done = [r for r in self._reads if r.seq <= seq]
        if done:
            self._reads = [r for r in self._reads if r.seq > seq]
        return done

    def lease_valid(self, now: int, ticks: int) -> bool:
        """Whether a round confirmed less than `ticks` ticks ago still holds the lease."""
        if self.lease_disabled or self.lease_start is None:
            return False
        return now - self.lease_start < ticks
