"""The sans-IO Raft core: events in (`tick`, `step`, `propose`, `read_index`, ...), a `Ready`
batch out (see `loom.raft.ready` for the driver's side of the contract).

No clock, no sockets, no trio: time is `tick()`, randomness is the `random.Random` passed in.
Nothing here iterates a set or depends on hash order; peers are visited in sorted order.

Safety rules and where they live:
  * one vote per term, persisted before the vote response leaves (`_handle_vote`, Ready);
  * a follower that heard from a live leader within `election_tick_min` ticks (or has just
    booted) ignores vote and pre-vote requests, unless the candidate was told to campaign by
    the leader itself (TimeoutNow) (`step`);
  * log matching: an append is accepted only if our entry at its previous index has its
    previous term (`_handle_append`);
  * commit rule: the leader commits only an entry of its own term replicated on a majority
    of voters, its own copy counted only once persisted (`_maybe_commit`, `advance`). A new
    commit index is not broadcast on its own: followers learn it from the next AppendEntries
    or heartbeat (a liveness matter only; it halves the messages of an unbatched write);
  * ReadIndex: a read is answered at the commit index once a majority acknowledged a
    heartbeat round sent after the read arrived, and only after the leader committed an entry
    of its own term (`_leader_read`, `_on_heartbeat_response`; the rounds' bookkeeping is
    `loom.raft.readonly`);
  * lease: a read may skip the round while the lease holds: a heartbeat round acknowledged by
    a majority was sent less than `election_tick_min - lease_drift_ticks` ticks ago (those
    voters will refuse other candidates for `election_tick_min` of their own ticks). A leader
    that sent TimeoutNow never uses its lease again in that term (`_lease_valid`);
  * joining: a node that started empty without being a founder (a new node, or one that
    lost its disk and came back under its old name) is `joining`. While joining it never
    campaigns (`promotable`), never grants a vote or pre-vote (`_handle_vote`), and marks
    every acknowledgement it sends `joining`, so no leader counts it for a commit, a read
    round, the lease or check-quorum (`_counted`). It stops joining only once its commit
    index reaches a read index R it obtained, after it started, from a leader
    (`_join_floor`, `_maybe_joined`), and only if its log then does not count it as a
    voter: a member that lost its data comes back only as a learner (removed, then added or
    re-admitted), since it may also have forgotten a vote;

Invariant (joining): a node counts in no quorum, neither by itself nor in a leader's tally,
before its log holds every entry committed before it started empty, nor ever again in a
configuration that counted it before it lost its data. Proof: R answers a ReadIndex request
sent after the node started, so R is at least the index of every entry committed before then
(the ReadIndex rule above, whose quorum counts no joining node); the node's commit index
reaching R means its log holds that whole committed prefix (log matching); and it leaves
joining only as a learner or a non-member, so any configuration that counts it again comes
from a promotion committed after that. Without this rule a wiped node replaying the log from
index 1 passes through the cluster's old configurations, some of which count it (the
bootstrap's first entry makes it the only voter), and its lost votes and acknowledgements no
longer hold up the majorities that committed later entries. Founders start from the
bootstrap entries, never empty; the driver keeps the joining flag durable until `joining`
turns False.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mypy_extensions import mypyc_attr

from loom.raft import messages as m
from loom.raft.confchange import ConfChange, ConfChangeType, apply_change, check_change
from loom.raft.config import RaftConfig
from loom.raft.log import RaftLog
from loom.raft.progress import Progress, PState
from loom.raft.quorum import VoteResult, has_quorum, majority, quorum_index, vote_result
from loom.raft.readonly import ReadRounds
from loom.raft.ready import (
    Busy,
    BytesSource,
    NotLeader,
    ReadState,
    Ready,
    Role,
    SnapshotChunk,
    SnapshotSource,
    SoftState,
)
from loom.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta

_VOTE_REQS = (m.RequestVote, m.PreVote)
# The context of the read a joining node asks for (see "Joining" above); never an
# application's (those are surfaced as ReadStates; this one is consumed by the core).
JOIN_READ_CTX = b"\x00loom:join"
# A follower told its leader's process is gone (`peer_gone`) campaigns within 1..GONE_TICKS
# ticks: random, so two followers told at once rarely split the vote.
GONE_TICKS = 4


def _source(data: bytes | SnapshotSource) -> SnapshotSource:
    return BytesSource(data) if isinstance(data, bytes) else data


class _NotStored:
    """The source of a snapshot just received, until the driver has stored it and says where
    (`snapshot_stored`, before `advance`): the core never holds a received snapshot's bytes."""

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, n: int) -> bytes:
        raise RuntimeError("a received snapshot was read before the driver stored it")


# The simulator's mutants (loom/sim/mutants.py) subclass the core in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class RaftCore:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        snapshot_data: bytes | SnapshotSource = b"",
        joining: bool = False,
    ) -> None:
        hs = hard_state or HardState()
        snap = snapshot or SnapshotMeta()
        self.cfg = config
        self.id = config.node_id
        self._rng = rng
        self.term, self.vote = hs.term, hs.vote
        ents = [e for e in entries if e.index > snap.index]
        self.log = RaftLog(snap.index, snap.term, ents, hs.commit)
        self.conf = snap.conf
        self._conf_history: list[tuple[int, ConfState]] = [(snap.index, snap.conf)]
        # The last snapshot: its meta, and where its bytes are read from when a follower needs
        # them (never the bytes themselves, unless the caller handed them in memory).
        self.snapshot_meta = snap
        self._snap_src: SnapshotSource = _source(snapshot_data)
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.ticks = 0  # ticks since construction: the core's only notion of time
        self.election_elapsed = 0
        # after a restart, honour a possible live leader we cannot remember (its lease may
        # count on our earlier acknowledgement); only lease reads depend on this
        self._booting = config.lease_reads
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self.lead_transferee: str | None = None
        self._transfer_elapsed = 0
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._need_bcast = False
        # Joining (see the module docstring): True until the commit index reaches the read
        # index `_join_floor` a leader answered after this node started empty.
        self.joining = joining
        self._join_floor: int | None = None
        self._join_asked: int | None = None  # tick of the last request for the floor
        self._rr = ReadRounds()  # ReadIndex rounds, pending reads, the lease (leader only)
        # Counters for the node's metrics: reads answered under the leader lease, and reads
        # that needed a heartbeat round (ReadIndex). A single voter needs neither.
        self.lease_reads = 0
        self.read_index_rounds = 0
        self.snapshots_sent = 0  # snapshot transfers started to a follower
        # snapshot being received: (leader, term, index, total) and how many of its bytes
        # went to the driver (Ready.snapshot_chunks); the bytes themselves never stay here
        self._snap_rx: tuple[str, int, int, int] | None = None
        self._snap_rx_len = 0
        # outputs
        self._msgs: list[m.Message] = []
        self._read_states: list[ReadState] = []
        self._rx_chunks: list[SnapshotChunk] = []
        self._install: SnapshotMeta | None = None
        self._prev_hs = hs
        self._prev_ss = SoftState(None, Role.FOLLOWER)
        self._outstanding: Ready | None = None

    # ------------------------------------------------------------------ helpers
    def _random_timeout(self) -> int:
        return self._rng.randrange(self.cfg.election_tick_min, self.cfg.election_tick_max)

    def promotable(self) -> bool:
        """Whether this node may campaign: a voter of its configuration, and not joining."""
        return not self.joining and self.id in self.conf.voters

    def _counted(self, peer: str) -> bool:
        """Whether the leader counts `peer`'s acknowledgements (itself always: a leader never
        joins). A joining follower's acknowledgements are true about the entries it holds but
        it may have forgotten a vote or a newer term: they confirm nothing."""
        pr = self.progress.get(peer)
        return pr is not None and not pr.joining

    def _peers(self) -> list[str]:
        return sorted(p for p in self.progress if p != self.id)

    def _send(self, msg: m.Message) -> None:
        self._msgs.append(msg)

    def _in_lease(self) -> bool:
        """We heard from a live leader (or just booted) less than election_tick_min ago."""
        return (self.leader is not None or self._booting) and (
            self.election_elapsed < self.cfg.election_tick_min
        )

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    # ------------------------------------------------------------------ role changes
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        self.leader = None
        self.election_elapsed = self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes = {}
        self.progress = {}
        self.lead_transferee = None
        self._rr.reset()
        self._uncommitted_bytes = 0
        self._need_bcast = False

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index
        for p in (*self.conf.voters, *self.conf.learners):
            self.progress[p] = Progress(last + 1, self.cfg.max_inflight)
        me = self.progress.setdefault(self.id, Progress(last + 1, self.cfg.max_inflight))
        me.match = self.log.persisted
        me.become_replicate()
        # no conf change until everything in the log at election time is applied
        self._pending_conf_index = last
        self._append(EntryType.NOOP, b"")
        self._broadcast_append()

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_follower(self.term, None)
            self.role = Role.PRE_CANDIDATE
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            term = self.term
        self._booting = False
        self._votes = {self.id: True}
        if vote_result(self.conf.voters, self._votes) is VoteResult.WON:
            self._won(pre)
            return
        li, lt = self.log.last_index, self.log.last_term()
        kind = m.PreVote if pre else m.RequestVote
        for v in sorted(self.conf.voters):
            if v != self.id:
                self._send(kind(v, self.id, term, li, lt, transfer))

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=False)
        else:
            self._become_leader()

    # ------------------------------------------------------------------ inputs
    def _check_idle(self) -> None:
        if self._outstanding is not None:
            raise RuntimeError("advance() the outstanding Ready before other calls")

    def tick(self) -> None:
        self._check_idle()
        self.ticks += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick_min:
            self._booting = False
        if self.role is Role.LEADER:
            self._tick_leader()
        elif self.joining:
            self._ask_join_floor()
        elif self.election_elapsed >= self._timeout and self.promotable():
            self._campaign(pre=self.cfg.pre_vote, transfer=False)

    def peer_gone(self, peer: str) -> None:
        """The transport has proof that `peer`'s process is gone: a connection to its address
        was refused (nothing listens there). A partition or a paused process drops packets
        instead, and then only the election timeout notices.

        A follower whose leader it is stops honouring that leader and campaigns within
        GONE_TICKS instead of a whole election timeout (at least `election_tick_min`).
        Timing is never a safety matter in Raft, and PreVote keeps this from disrupting a
        live leader: a member that still hears the leader ignores the pre-vote, and a
        heartbeat turns the pre-candidate back into a follower without a term change.
        Ignored without PreVote (a real campaign would raise the term and depose a leader
        that is only unreachable from here) and with lease reads (a leader's lease counts on
        every follower honouring it for `election_tick_min` after its last acknowledgement,
        whatever the transport believes)."""
        self._check_idle()
        cfg = self.cfg
        if (not cfg.fast_failover or not cfg.pre_vote or cfg.lease_reads
                or self.role is not Role.FOLLOWER or self.leader != peer or peer == self.id):
            return
        self.leader = None
        self._timeout = min(self._timeout,
                            self.election_elapsed + self._rng.randrange(1, GONE_TICKS + 1))

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        if self.lead_transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.cfg.election_tick_min:
                self.lead_transferee = None  # abort; the lease stays disabled this term
        if self.election_elapsed >= self.cfg.election_tick_min:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                live = has_quorum(self.conf.voters, lambda v: self._counted(v) and (
                    v == self.id or self.progress[v].recent_active))
                for pr in self.progress.values():
                    pr.recent_active = False
                if not live:
                    self._become_follower(self.term, None)
                    return
        if self._heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._heartbeat_round()

    def propose(self, data: bytes) -> int | NotLeader | Busy:
        """Append a command. Returns its log index (it may still be lost if leadership is)."""
        self._check_idle()
        return self._propose(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int | NotLeader | Busy:
        self._check_idle()
        if self.role is Role.LEADER:
            if self._pending_conf_index > self.log.applied:
                return Busy("a membership change is in flight")
            why = check_change(self.conf, cc)
            if why is None and cc.type is ConfChangeType.ADD_VOTER:
                pr = self.progress.get(cc.node)
                if cc.node not in self.conf.learners or pr is None:
                    why = "add the node as a learner first"
                elif pr.match < self.log.committed or pr.joining:
                    why = "learner has not caught up"
            if why is not None:
                return Busy(why)
        r = self._propose(EntryType.CONF_CHANGE, cc.encode())
        if isinstance(r, int):
            self._pending_conf_index = r
        return r

    def _propose(self, kind: EntryType, data: bytes) -> int | NotLeader | Busy:
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if self.lead_transferee is not None:
            return Busy("leadership transfer in progress")
        if self._uncommitted_bytes and (
            self._uncommitted_bytes + len(data) > self.cfg.max_uncommitted_bytes
        ):
            return Busy("too much uncommitted data")
        index = self._append(kind, data)
        self._need_bcast = True  # sent in ready(): many proposals, one AppendEntries
        return index

    def _append(self, kind: EntryType, data: bytes) -> int:
        index = self.log.last_index + 1
        self.log.append([Entry(self.term, index, kind, data)])
        self._uncommitted_bytes += len(data)
        return index

    def read_index(self, ctx: bytes) -> NotLeader | Busy | None:
        """Request a linearizable read; the answer is a ReadState(ctx, index) in a later Ready
        (never, if leadership is lost meanwhile: the caller times out)."""
        self._check_idle()
        if self.role is Role.LEADER:
            if sum(self._rr.pending()) >= self.cfg.max_read_requests:
                return Busy("too many pending reads")
            if self.log.term(self.log.committed) != self.term:
                self._rr.wait_for_commit(ctx, self.id)
            else:
                self._leader_read(ctx, self.id)
            return None
        if self.leader is None or self.role is not Role.FOLLOWER:
            return NotLeader(self.leader)
        self._send(m.ReadIndex(self.leader, self.id, self.term, ctx))
        return None

    def transfer_leadership(self, to: str) -> NotLeader | Busy | None:
        self._check_idle()
        if self.role is not Role.LEADER:
            return NotLeader(self.leader)
        if to == self.id or to not in self.conf.voters or to not in self.progress:
            return Busy("transfer target is not another voter")
        self.lead_transferee, self._transfer_elapsed = to, 0
        self._rr.lease_disabled = True
        if self.progress[to].match == self.log.last_index:
            self._send(m.TimeoutNow(to, self.id, self.term))
        else:
            self._send_append(to)
        return None

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """The meta a snapshot of the state at applied index `index` has (to store it before
        `snapshot_taken`)."""
        term = self.log.term(index)
        if index > self.log.applied or term is None:
            raise ValueError("snapshot index must be applied and still in the log")
        return SnapshotMeta(index, term, self._conf_at(index))

    def snapshot_taken(self, index: int, data: bytes | SnapshotSource) -> SnapshotMeta:
        """The application saved a snapshot of its state at applied index `index`: keep it for
        slow followers and compact the log, keeping at most `trailing_entries` and at most
        `trailing_bytes` of entry data behind it (the in-memory log is bounded in bytes)."""
        self._check_idle()
        if index <= self.snapshot_meta.index:
            return self.snapshot_meta
        meta = self.snapshot_meta_at(index)
        self.snapshot_meta, self._snap_src = meta, _source(data)
        self.log.compact(self._trailing_point(index))
        keep = [c for c in self._conf_history if c[0] > index]
        self._conf_history = [(index, meta.conf), *keep]
        return meta

    def _trailing_point(self, index: int) -> int:
        """The index to compact up to behind a snapshot at `index`: the entries after it, up
        to `index`, are at most `trailing_entries` and hold at most `trailing_bytes`."""
        log = self.log
        at, budget = index, self.cfg.trailing_bytes
        floor = max(log.offset, index - self.cfg.trailing_entries)
        while at > floor:
            budget -= len(log.entries[at - log.offset - 1].data)
            if budget < 0:
                break
            at -= 1
        return at

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_history[0][1]
        for at, c in self._conf_history:
            if at <= index:
                conf = c
        return conf

    # ------------------------------------------------------------------ messages
    def step(self, msg: m.Message) -> None:
        self._check_idle()
        if msg.to != self.id:
            return
        if msg.term > self.term:
            if isinstance(msg, _VOTE_REQS):
                if not msg.transfer and self._in_lease():
                    return  # a live leader exists: do not let a candidate disrupt it
                if isinstance(msg, m.PreVote):
                    self._handle_vote(msg)
                    return
                self._become_follower(msg.term, None)
            elif isinstance(msg, m.PreVoteResponse) and not msg.reject:
                pass  # granted pre-votes carry the term the candidate will campaign in
            elif isinstance(msg, m.AppendEntries | m.Heartbeat | m.InstallSnapshot):
                self._become_follower(msg.term, msg.frm)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self.term:
            if isinstance(msg, m.AppendEntries | m.Heartbeat):
                # tell a stale leader about the newer term so it steps down
                self._send(m.AppendResponse(msg.frm, self.id, self.term, 0, False, 0, 0))
            elif isinstance(msg, m.PreVote):
                self._send(m.PreVoteResponse(msg.frm, self.id, self.term, True))
            return
        if isinstance(msg, _VOTE_REQS):
            self._handle_vote(msg)
        elif self.role is Role.LEADER:
            self._step_leader(msg)
        elif self.role is Role.FOLLOWER:
            self._step_follower(msg)
        else:
            self._step_candidate(msg)

    def _handle_vote(self, msg: m.RequestVote | m.PreVote) -> None:
        pre = isinstance(msg, m.PreVote)
        can_vote = (
            self.vote == msg.frm
            or (self.vote is None and self.leader is None)
            or (pre and msg.term > self.term)
        )
        if (can_vote and self.log.is_up_to_date(msg.last_index, msg.last_term)
                and self._voter_in_own_log() and not self.joining):
            if pre:
                self._send(m.PreVoteResponse(msg.frm, self.id, msg.term, False))
            else:
                self.vote = msg.frm
                self.election_elapsed = 0
                self._send(m.VoteResponse(msg.frm, self.id, msg.term, False))
        else:
            kind = m.PreVoteResponse if pre else m.VoteResponse
            self._send(kind(msg.frm, self.id, self.term, True))

    def _voter_in_own_log(self) -> bool:
        """Whether the newest configuration this node's log holds (applied or not) counts it
        as a voter. Only then does it vote.

        A removed node, or one wiped and readmitted under its old name, may have helped commit
        entries it no longer has; a stale member that missed the removal still counts it as a
        voter. Its vote could then complete a majority of the old configuration for a
        candidate missing those entries. It votes again only once its log holds a
        configuration that makes it a voter, which comes after everything committed before it.
        The newest configuration, not the applied one: a learner promoted just before its
        leader died holds the promotion without knowing it committed, and the others may need
        its vote."""
        conf, log = self.conf, self.log
        for e in log.slice(log.applied + 1, log.last_index + 1):
            if e.type is EntryType.CONF_CHANGE:
                conf = _conf_after(conf, e)
        return self.id in conf.voters

    def _step_candidate(self, msg: m.Message) -> None:
        if isinstance(msg, m.AppendEntries | m.Heartbeat | m.InstallSnapshot):
            self._become_follower(self.term, msg.frm)
            self._step_follower(msg)
            return
        pre = self.role is Role.PRE_CANDIDATE
        if isinstance(msg, m.PreVoteResponse if pre else m.VoteResponse):
            self._votes.setdefault(msg.frm, not msg.reject)
            result = vote_result(self.conf.voters, self._votes)
            if result is VoteResult.WON:
                self._won(pre)
            elif result is VoteResult.LOST:
                self._become_follower(self.term, None)

    def _step_follower(self, msg: m.Message) -> None:
        if isinstance(msg, m.AppendEntries):
            self.election_elapsed, self.leader = 0, msg.frm
            self._handle_append(msg)
        elif isinstance(msg, m.Heartbeat):
            self.election_elapsed, self.leader = 0, msg.frm
            self.log.commit_to(min(msg.commit, self.log.last_index))
            self._send(m.HeartbeatResponse(msg.frm, self.id, self.term, msg.seq, self.joining))
        elif isinstance(msg, m.InstallSnapshot):
            self.election_elapsed, self.leader = 0, msg.frm
            self._handle_snapshot(msg)
        elif isinstance(msg, m.TimeoutNow):
            if self.promotable():
                self._campaign(pre=False, transfer=True)
        elif isinstance(msg, m.ReadIndexResponse):
            if msg.ctx == JOIN_READ_CTX:
                if self.joining:
                    self._join_floor = max(self._join_floor or 0, msg.index)
            else:
                self._read_states.append(ReadState(msg.ctx, msg.index))
        if self.joining:
            self._maybe_joined()

    def _ack(self, to: str, index: int, *, reject_hint: int | None = None,
             log_term: int = 0) -> None:
        """An AppendResponse: accepted up to `index`, or (with `reject_hint`) a rejection of
        the append whose previous index was `index`. It says whether we are joining."""
        self._send(m.AppendResponse(to, self.id, self.term, index, reject_hint is not None,
                                    reject_hint or 0, log_term, self.joining))

    def _ask_join_floor(self) -> None:
        """While joining, ask the leader we follow for a read index (again every
        election_tick_min ticks: the request or its answer may be lost)."""
        if self.leader is None or self.role is not Role.FOLLOWER:
            return
        if self._join_asked is not None and (
                self.ticks - self._join_asked < self.cfg.election_tick_min):
            return
        self._join_asked = self.ticks
        self._send(m.ReadIndex(self.leader, self.id, self.term, JOIN_READ_CTX))

    def _maybe_joined(self) -> None:
        if self._join_floor is None or self.log.committed < self._join_floor:
            if self._join_asked is None:
                self._ask_join_floor()  # the first leader we hear of: ask at once
            return
        if self._voter_in_own_log():
            # Caught up, but still a voter of the configuration it lost its data in: it may
            # have voted in a term it no longer knows. It is counted again only as a new
            # member: removed, then added or re-admitted as a learner, then promoted.
            return
        self.joining = False
        self._join_floor = self._join_asked = None

    def _handle_append(self, msg: m.AppendEntries) -> None:
        log = self.log
        if msg.index < log.committed:
            self._ack(msg.frm, log.committed)
            return
        if self._prev_matches(msg):
            last_new = msg.index + len(msg.entries)
            ci = log.find_conflict(msg.entries)
            if ci:
                log.truncate_and_append(list(msg.entries[ci - msg.index - 1 :]))
            log.commit_to(min(msg.commit, last_new))
            self._ack(msg.frm, last_new)
            return
        hint = log.find_conflict_by_term(min(msg.index, log.last_index), msg.log_term)
        self._ack(msg.frm, msg.index, reject_hint=hint, log_term=log.term(hint) or 0)

    def _prev_matches(self, msg: m.AppendEntries) -> bool:
        """Log matching: our entry at the append's previous index has its previous term."""
        return self.log.match_term(msg.index, msg.log_term)

    def _handle_snapshot(self, msg: m.InstallSnapshot) -> None:
        """A chunk is taken only where the transfer stands (one leader, term, snapshot index
        and size: anything else starts it over), and only within `max_snapshot_bytes`; its
        bytes go to the driver (Ready.snapshot_chunks). The answer says how far we are, so a
        lost, repeated or reordered chunk makes the leader resend from there."""
        if msg.snap_index <= self.log.committed:
            self._snap_rx = None
            self._ack(msg.frm, self.log.committed)
            return
        key = (msg.frm, msg.term, msg.snap_index, msg.total)
        if self._snap_rx != key:
            self._snap_rx, self._snap_rx_len = key, 0
        got = self._snap_rx_len
        if (msg.offset == got and got + len(msg.data) <= msg.total <= self.cfg.max_snapshot_bytes
                and (msg.data or got == 0)):
            conf = ConfState(voters=msg.voters, learners=msg.learners, removed=msg.removed)
            meta = SnapshotMeta(msg.snap_index, msg.snap_term, conf)
            self._rx_chunks.append(SnapshotChunk(meta, got, msg.data, msg.total))
            got = self._snap_rx_len = got + len(msg.data)
            if msg.done and got == msg.total:
                self._snap_rx = None
                self._install_snapshot(msg, meta)
                return
        self._send(m.SnapshotResponse(msg.frm, self.id, self.term, msg.snap_index, got, False))

    def _install_snapshot(self, msg: m.InstallSnapshot, meta: SnapshotMeta) -> None:
        if self.log.match_term(msg.snap_index, msg.snap_term):
            self.log.commit_to(msg.snap_index)  # we already hold that prefix
        else:
            self.log.restore(msg.snap_index, msg.snap_term)
            self.conf = meta.conf
            self._conf_history = [(msg.snap_index, meta.conf)]
            self.snapshot_meta, self._snap_src = meta, _NotStored(msg.total)
            self._install = meta
        self._ack(msg.frm, msg.snap_index)

    # ------------------------------------------------------------------ leader
    def _step_leader(self, msg: m.Message) -> None:
        if isinstance(msg, m.ReadIndex):
            rounds, before_commit = self._rr.pending()
            if self.log.term(self.log.committed) != self.term:
                if before_commit < self.cfg.max_read_requests:
                    self._rr.wait_for_commit(msg.ctx, msg.frm)
            elif rounds < self.cfg.max_read_requests:
                self._leader_read(msg.ctx, msg.frm)
            return
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        if isinstance(msg, m.AppendResponse | m.HeartbeatResponse):
            was, pr.joining = pr.joining, msg.joining
            if (isinstance(msg, m.AppendResponse) and msg.joining and msg.reject
                    and msg.reject_hint < pr.match):
                pr.forget_match(msg.reject_hint)  # it lost its disk: its old acks are void
            if was and not msg.joining and self._maybe_commit():  # caught up: counted again
                self._broadcast_append(send_empty=False)
        if isinstance(msg, m.AppendResponse):
            self._on_append_response(msg, pr)
        elif isinstance(msg, m.HeartbeatResponse):
            self._on_heartbeat_response(msg, pr)
        elif (isinstance(msg, m.SnapshotResponse) and pr.state is PState.SNAPSHOT
              and msg.snap_index == pr.snap_index):
            if msg.reject:
                pr.become_probe()
                self._send_append(msg.frm)
                return
            if msg.offset < pr.snap_acked or msg.offset > pr.snap_sent:
                pr.snap_sent = msg.offset  # follower lost or skipped bytes: resend
            pr.snap_acked = msg.offset
            self._send_snapshot_chunks(msg.frm, pr)

    def _on_append_response(self, msg: m.AppendResponse, pr: Progress) -> None:
        if msg.reject:
            if pr.state is PState.SNAPSHOT:
                return
            hint = msg.reject_hint
            if msg.log_term > 0:
                hint = self.log.find_conflict_by_term(hint, msg.log_term)
            if pr.maybe_decrease(msg.index, hint):
                if pr.state is PState.REPLICATE:
                    pr.become_probe()
                self._send_append(msg.frm)
            return
        old_paused = pr.paused()
        if pr.maybe_update(msg.index):
            if pr.state is not PState.REPLICATE:
                pr.become_replicate()
            if self._maybe_commit():
                self._broadcast_append(send_empty=False)  # new entries carry the commit
            elif old_paused or pr.next <= self.log.last_index:
                self._send_append(msg.frm)
            if msg.frm == self.lead_transferee and pr.match == self.log.last_index:
                self._send(m.TimeoutNow(msg.frm, self.id, self.term))
        elif old_paused and not pr.paused():
            self._send_append(msg.frm)

    def _on_heartbeat_response(self, msg: m.HeartbeatResponse, pr: Progress) -> None:
        if (msg.frm in self.conf.voters and not pr.joining
                and self._rr.on_ack(msg.frm, msg.seq)):
            self._confirm_rounds()
        if pr.state is PState.SNAPSHOT:
            if pr.snap_index != self.snapshot_meta.index:
                pr.become_snapshot(self.snapshot_meta.index)
            pr.snap_sent = pr.snap_acked  # retransmit anything unacknowledged
            self._send_snapshot_chunks(msg.frm, pr)
            return
        if pr.state is PState.REPLICATE and len(pr.inflight) >= pr.max_inflight:
            pr.inflight.popleft()  # the follower is alive: let one more append through
        pr.probe_sent = False
        if pr.match < self.log.last_index:
            self._send_append(msg.frm)
        elif msg.frm == self.lead_transferee:
            # The caught-up target is alive but has not campaigned: its TimeoutNow was lost, or
            # it arrived while the target's own timer had fired (a pre-candidate ignores it).
            # Ask again, every heartbeat round until the transfer window closes. A repeat is
            # harmless: a target that did campaign is in a later term and drops it.
            self._send(m.TimeoutNow(msg.frm, self.id, self.term))

    def _maybe_commit(self) -> bool:
        q = quorum_index(self.conf.voters,
                         lambda v: self.progress[v].match if self._counted(v) else 0)
        t = self.log.term(q)
        if q > self.log.committed and self._countable(t):
            for e in self.log.slice(self.log.committed + 1, q + 1):
                self._uncommitted_bytes = max(0, self._uncommitted_bytes - len(e.data))
            self.log.commit_to(q)
            if t == self.term:
                for ctx, frm in self._rr.take_waiting_for_commit():
                    self._leader_read(ctx, frm)
            return True
        return False

    def _countable(self, term: int | None) -> bool:
        """Only an entry of the current term is committed by counting replicas (Raft 5.4.2);
        older ones are committed with it."""
        return term == self.term

    def _broadcast_append(self, send_empty: bool = True) -> None:
        for p in self._peers():
            self._send_append(p, send_empty)

    def _send_append(self, to: str, send_empty: bool = True) -> None:
        pr = self.progress[to]
        log = self.log
        while not pr.paused():
            prev = pr.next - 1
            prev_term = log.term(prev)
            if prev_term is None:  # compacted away: stream the snapshot instead
                pr.become_snapshot(self.snapshot_meta.index)
                self._send_snapshot_chunks(to, pr)
                return
            hi = min(log.last_index + 1, pr.next + self.cfg.max_entries_per_append)
            ents = log.slice(pr.next, hi, self.cfg.max_bytes_per_append) if hi > pr.next else []
            if not ents and not send_empty:
                return
            self._send(m.AppendEntries(to, self.id, self.term, prev, prev_term, tuple(ents),
                                       log.committed))
            pr.sent_entries(ents[-1].index if ents else prev, len(ents))
            if pr.state is not PState.REPLICATE or pr.next > log.last_index:
                return
            send_empty = False

    def snapshot_stored(self, index: int, source: SnapshotSource) -> None:
        """The snapshot at `index` (received from a leader, say) is stored and readable from
        `source`: read it from there from now on, so its bytes can leave memory. Only a source
        of the same bytes may be given (a stream in flight goes on from the same offsets)."""
        if index == self.snapshot_meta.index:
            self._snap_src = source

    def _send_snapshot_chunks(self, to: str, pr: Progress) -> None:
        meta, src, size = self.snapshot_meta, self._snap_src, self.cfg.snapshot_chunk_bytes
        total = src.size
        window = self.cfg.snapshot_window * size
        conf = meta.conf
        while pr.snap_sent - pr.snap_acked < window:
            off = pr.snap_sent
            if off > total or (off == total and total > 0):
                return
            chunk = src.read(off, size)
            pr.snap_sent = off + len(chunk) + (1 if not chunk else 0)
            if off == 0:
                self.snapshots_sent += 1  # a transfer starts (counted once, not per chunk)
            self._send(m.InstallSnapshot(to, self.id, self.term, meta.index, meta.term,
                                         conf.voters, conf.learners, off, chunk, total,
                                         off + len(chunk) == total, conf.removed))

    # ------------------------------------------------------------------ reads
    def _heartbeat_round(self, *, for_read: bool = False) -> None:
        """Send round `ReadRounds.seq + 1`: a numbered heartbeat whose acknowledgement by a
        quorum confirms this leadership as of now (ReadIndex) and renews the lease.

        A periodic round goes to every peer. A read's round goes only to the quorum - 1 voters
        that answered the newest round first: a majority is all a round needs, and on a busy
        leader each extra heartbeat is a send, a receive and a step. Safety never depends on
        who was asked: a round counts only when a quorum has acknowledged it or a later one.
        A chosen voter that has gone quiet delays a read until the next periodic round, which
        everyone gets and which confirms every read numbered at or below it; the voters that
        answer that round first are asked for the next read's round."""
        seq = self._rr.new_round(self.ticks, self.ticks - self.cfg.election_tick_min)
        peers = (self._rr.round_peers(self.conf.voters, self.id, self._counted,
                                      majority(len(self.conf.voters)) - 1)
                 if for_read else self._peers())
        for p in peers:
            pr = self.progress[p]
            self._send(m.Heartbeat(p, self.id, self.term, min(pr.match, self.log.committed),
                                   seq))
        self._confirm_rounds()

    def _confirm_rounds(self) -> None:
        for r in self._rr.confirm(self.conf.voters, self.id, self._counted):
            self._answer_read(r.ctx, r.frm, r.index)

    def _lease_valid(self) -> bool:
        if not self.cfg.lease_reads:
            return False
        return self._rr.lease_valid(
            self.ticks, self.cfg.election_tick_min - self.cfg.lease_drift_ticks)

    def _leader_read(self, ctx: bytes, frm: str) -> None:
        index = self.log.committed
        if len(self.conf.voters) == 1 or self._lease_valid():
            if len(self.conf.voters) > 1:
                self.lease_reads += 1
            self._answer_read(ctx, frm, index)
            return
        self.read_index_rounds += 1
        self._rr.add(ctx, index, frm)
        self._heartbeat_round(for_read=True)

    def _answer_read(self, ctx: bytes, frm: str, index: int) -> None:
        if frm == self.id:
            self._read_states.append(ReadState(ctx, index))
        else:
            self._send(m.ReadIndexResponse(frm, self.id, self.term, ctx, index))

    # ------------------------------------------------------------------ Ready / advance
    def has_ready(self) -> bool:
        log = self.log
        return bool(
            self._msgs or self._read_states or self._install is not None or self._need_bcast
            or self._rx_chunks
            or log.write_from <= log.last_index or log.committed > log.applied
            or self.hard_state() != self._prev_hs or self.soft_state() != self._prev_ss
        )

    def ready(self) -> Ready | None:
        self._check_idle()
        if self._need_bcast:
            self._need_bcast = False
            self._broadcast_append(send_empty=False)
        if not self.has_ready():
            return None
        log = self.log
        hs = self.hard_state()
        hs_out: HardState | None = None
        must_sync = bool(log.write_from <= log.last_index) or self._install is not None
        if hs != self._prev_hs:
            hs_out = hs
            if hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote:
                must_sync = True
        ss = self.soft_state()
        committed: tuple[Entry, ...] = ()
        if log.committed > log.applied:
            committed = tuple(log.slice(log.applied + 1, log.committed + 1,
                                        self.cfg.max_committed_bytes_per_ready))
        rd = Ready(
            soft_state=ss if ss != self._prev_ss else None,
            hard_state=hs_out,
            entries=tuple(log.unpersisted()),
            must_sync=must_sync,
            snapshot=self._install,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            snapshot_chunks=tuple(self._rx_chunks),
        )
        self._msgs, self._read_states, self._install, self._rx_chunks = [], [], None, []
        self._prev_hs, self._prev_ss = hs, ss
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._outstanding:
            raise RuntimeError("advance() takes the Ready returned by the last ready()")
        if rd.snapshot is not None and isinstance(self._snap_src, _NotStored):
            raise RuntimeError("a received snapshot must be stored (snapshot_stored) before "
                               "advance()")
        self._outstanding = None
        log = self.log
        if rd.entries:
            log.persisted = max(log.persisted, rd.entries[-1].index)
            log.write_from = max(log.write_from, rd.entries[-1].index + 1)
        for e in rd.committed_entries:
            if e.index <= log.applied:
                continue
            log.applied = e.index
            if e.type is EntryType.CONF_CHANGE:
                self._apply_conf_change(e)
        if self.role is Role.LEADER and self.id in self.progress:
            self.progress[self.id].maybe_update(log.persisted)
            if self._maybe_commit():
                self._broadcast_append(send_empty=False)

    def _apply_conf_change(self, e: Entry) -> None:
        new = _conf_after(self.conf, e)
        if new == self.conf:
            return
        self.conf = new
        self._conf_history.append((e.index, new))
        if self.role is not Role.LEADER:
            return
        if self.id not in new.voters:
            self._become_follower(self.term, None)  # removed: step down, never campaign
            return
        members = {*new.voters, *new.learners}
        for p in sorted(self.progress):
            if p not in members:
                del self.progress[p]
                self._rr.forget(p)
        for p in sorted(members - set(self.progress)):
            self.progress[p] = Progress(self.log.last_index + 1, self.cfg.max_inflight)
            self._send_append(p)
        if self.lead_transferee is not None and self.lead_transferee not in new.voters:
            self.lead_transferee = None
        if self._maybe_commit():
            self._broadcast_append(send_empty=False)
        self._confirm_rounds()


def _conf_after(conf: ConfState, e: Entry) -> ConfState:
    """The configuration after conf-change entry `e`. Replicated garbage changes nothing,
    identically on every replica."""
    try:
        cc = ConfChange.decode(e.data)
    except ValueError:
        return conf
    return apply_change(conf, cc)
