"""One seeded, single-threaded simulation of a whole Raft cluster under a client workload.

Everything comes from `random.Random(seed)`: the profile (`loom.sim.profiles`), cluster
size, network quality, node clocks, the nemesis schedule and the clients. Events live in one
heap ordered by (time, sequence number), so a seed replays exactly. Time is in nominal
ticks; each node ticks on its own clock (`loom.sim.clock`: an offset, a rate within
`1 +- drift`, rate changes and forward jumps).

The driver (`_drain`) carries out each Ready as `loom.raft.ready.plan` allows, the order
loomd's driver runs (a leader's replication traffic leaves, and committed entries are applied,
before the write), and can crash the node at every persistence point: before the write, after
the write but before fsync, after fsync but before sending the rest, after sending it but
before serving reads. Nemeses: partitions (halves, majority ring, bridge, isolated leader,
asymmetric), crash/restart (the disk keeps only what was synced, maybe a torn tail),
pause/resume (SIGSTOP: the clock catches up on resume), clock faults (rate changes within
the profile's drift, stalls and forward jumps: with lease reads on, rates only within the
bound the lease assumes and jumps only on a leader), leadership transfer, graceful leader
shutdown (transfer, then stop), membership changes (add learner with a fresh id, promote,
remove, readmit). The profile weighs them (`loom.sim.profiles`). Message loss, duplication
and reordering are always on at seed-chosen rates. Every fourth seed (`disk="mix"`; all
with `disk="wal"`) persists through the real `loom.storage.Storage` on `FaultFS` instead of
`SimDisk` (see `loom.sim.waldisk`): power cuts, torn WAL tails, failed fsyncs (the node
fail-stops) and slow ones, and every restart recovers through `Storage.open`. Invariants are
in `loom.sim.invariants`; client histories go to `loom.sim.linearizability` at the end.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from loom.raft import messages as m
from loom.raft.confchange import ConfChange, ConfChangeType, bootstrap
from loom.raft.config import RaftConfig
from loom.raft.core import RaftCore
from loom.raft.quorum import majority
from loom.raft.ready import Busy, BytesSink, BytesSource, NotLeader, Ready, Role, plan
from loom.raft.types import EntryType, HardState, SnapshotMeta
from loom.sim.clock import SimClock
from loom.sim.disk import SimDisk, Snapshot, durable_tail
from loom.sim.invariants import Oracle, Violation
from loom.sim.linearizability import Op, check_history
from loom.sim.mutants import core_class
from loom.sim.network import PARTITIONS, SimNetwork, partition
from loom.sim.profiles import (
    ELECTION_TICK_MIN,
    LEASE_DRIFT,
    LEASE_DRIFT_TICKS,
    NEMESES,
    REJOIN_EVERY,
    SimParams,
)
from loom.sim.waldisk import WalDisk
from loom.storage.errors import FatalIOError

TRACE_LEN = 60
DISK_MODES = ("sim", "wal", "mix")  # mix: every WAL_EVERY-th seed on the real storage code
WAL_EVERY = 4
__all__ = ["REJOIN_EVERY", "SimParams", "Simulation"]
_TICK, _DELIVER, _CLIENT, _TIMEOUT, _NEMESIS, _RESTART, _RESUME, _HEAL, _CALL, _GONE = range(10)
# Each nemesis round, the chance that a follower is told its live leader is gone (as a
# one-way firewall rejecting its dials would tell it): PreVote must keep that harmless.
FALSE_GONE_P = 0.15


@dataclass
class PendingOp:
    op_id: str
    client: int
    key: str
    kind: str
    value: str | None
    call: float
    node: str
    floor: int = 0  # for reads: highest commit index anywhere when it was requested


@dataclass
class SimNode:
    id: str
    disk: SimDisk | WalDisk
    clock: SimClock
    core: RaftCore | None = None
    inc: int = 0  # tick generation: bumped when the process stops or its clock changes
    paused: bool = False
    missed: int = 0
    deferred: list[m.Message] = field(default_factory=list)
    kv: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    commit: int = 0
    puts: dict[str, PendingOp] = field(default_factory=dict)
    reads: dict[bytes, PendingOp] = field(default_factory=dict)
    ready_reads: list[tuple[int, bytes]] = field(default_factory=list)
    removed: bool = False
    last_vote: tuple[int, str | None] = (0, None)
    synced: HardState = field(default_factory=HardState)  # last made durable (ready.plan)
    # started empty and not yet caught up (RaftCore.joining); kept across crashes like the
    # disk, cleared once the core reports it caught up
    joining: bool = False
    # a snapshot being received from a leader (Ready.snapshot_chunks); lost with the process
    rx: BytesSink = field(default_factory=BytesSink)


class Simulation:
    def __init__(self, seed: int, params: SimParams | None = None,
                 mutant: str | None = None, disk: str = "mix",
                 beyond_lease_bound: bool = False) -> None:
        """`beyond_lease_bound`: let clocks drift past what lease reads assume even with
        lease reads on (only a test that the simulator can break the assumption wants it)."""
        if disk not in DISK_MODES:
            raise ValueError(f"disk must be one of {DISK_MODES}")
        self.seed = seed
        self.rng = random.Random(seed)
        # refused dials (RaftCore.peer_gone) draw from their own generator, so adding them
        # left every other draw of a seed where it was
        self._gone_rng = random.Random(seed ^ 0x60E)
        if params is None:
            params = SimParams.from_seed(seed, self.rng, mutant)
            if disk == "wal" or (disk == "mix" and seed % WAL_EVERY == WAL_EVERY - 1):
                params.disk = "wal"
                # crashes between the WAL write and its fsync: torn tails for recovery to cut
                params.crash_ready_p = max(params.crash_ready_p, self.rng.choice((0.002, 0.01)))
                params.sync_fail_rate = self.rng.choice((0.0, 0.0005, 0.002))
                params.slow_sync_rate = self.rng.choice((0.0, 0.01, 0.05))
        if params.lease_reads and params.drift > LEASE_DRIFT and not beyond_lease_bound:
            raise ValueError(f"lease reads assume clock rates within 1 +- {LEASE_DRIFT:.4f}, "
                             f"not 1 +- {params.drift}")
        self.p = params
        self.oracle = Oracle()
        self.net = SimNetwork(self.rng, self.p.loss, self.p.dup, 0.05, self.p.delay_max)
        self.now = 0.0
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self.trace: deque[tuple[float, str, object]] = deque(maxlen=TRACE_LEN)
        self.nodes: dict[str, SimNode] = {}
        self.history: list[Op] = []
        self.in_flight: dict[str, PendingOp] = {}  # called, neither answered nor timed out
        self.next_node = 1
        self.steps = 0
        self.stats = {"crashes": 0, "fail_stops": 0, "elections": 0, "acked": 0, "reads": 0,
                      "snapshots": 0, "transfers": 0, "conf_changes": 0, "partitions": 0,
                      "wipes": 0, "readmits": 0, "puts": 0, "joined": 0,
                      "rejoin_chaos": 0, "clock_jumps": 0, "clock_rates": 0,
                      "gone_hints": 0}
        voters = tuple(f"n{i}" for i in range(1, self.p.nodes + 1))
        self.next_node = self.p.nodes + 1
        hs, ents = bootstrap(voters)
        for v in voters:
            node = self._add_node(v, start=False)
            node.disk.save(hs, ents, None)
            node.disk.sync()
            self._start(node)
        for c in range(self.p.clients):
            self._at(self.rng.uniform(1, 5), _CLIENT, c)
        self._at(self.p.nemesis_every, _NEMESIS, None)
        self.leader_guess: list[str | None] = [None] * self.p.clients

    # ------------------------------------------------------------------ plumbing
    def _at(self, t: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def _cfg(self, nid: str) -> RaftConfig:
        return RaftConfig(
            node_id=nid, election_tick_min=ELECTION_TICK_MIN,
            election_tick_max=self.p.election_tick_max,
            heartbeat_tick=2, max_entries_per_append=self.p.max_entries_per_append,
            max_inflight=4, max_uncommitted_bytes=4096, check_quorum=True,
            pre_vote=self.p.pre_vote, lease_reads=self.p.lease_reads,
            lease_drift_ticks=LEASE_DRIFT_TICKS, snapshot_chunk_bytes=64, snapshot_window=2,
            trailing_entries=self.p.trailing_entries,
        )

    def _new_disk(self) -> SimDisk | WalDisk:
        if self.p.disk == "wal":
            return WalDisk(self.rng.getrandbits(64), b"{}",
                           trailing_entries=self.p.trailing_entries,
                           sync_fail_rate=self.p.sync_fail_rate,
                           slow_sync_rate=self.p.slow_sync_rate)
        return SimDisk(Snapshot(SnapshotMeta(), b"{}"))

    def _add_node(self, nid: str, start: bool = True) -> SimNode:
        node = SimNode(nid, self._new_disk(), SimClock(self._draw_rate(), self.rng.random()))
        self.nodes[nid] = node
        if start:  # not a founder: it starts empty and joins
            node.joining = True
            self._start(node)
        return node

    def _start(self, node: SimNode) -> None:
        rec = node.disk.load()
        node.inc += 1
        core = core_class(self.p.mutant)
        node.core = core(self._cfg(node.id), random.Random(self.rng.getrandbits(64)),
                         rec.hard_state, rec.snapshot.meta, rec.entries, rec.snapshot.data,
                         joining=node.joining)
        node.kv = dict(json.loads(rec.snapshot.data))
        node.applied = rec.snapshot.meta.index
        node.commit = node.core.log.committed
        node.paused, node.missed, node.deferred = False, 0, []
        node.rx = BytesSink()
        node.ready_reads = []
        node.synced = rec.hard_state
        self._schedule_tick(node)
        self._drain(node)

    def _draw_rate(self) -> float:
        """A clock rate within 1 +- drift; half the time at an extreme, where skew bites."""
        d = self.p.drift
        return 1.0 + (self.rng.choice((-d, d)) if self.rng.random() < 0.5
                      else self.rng.uniform(-d, d))

    def _schedule_tick(self, node: SimNode) -> None:
        """(Re)schedule the node's next tick from its clock; earlier ones become stale."""
        node.inc += 1
        self._at(node.clock.resync(self.now), _TICK, (node.id, node.inc))

    def _wipe(self, node: SimNode) -> None:
        """Replace the node's disk with an empty one and restart it (same id)."""
        self.stats["wipes"] += 1
        self.trace.append((self.now, "wipe", node.id))
        self._halt(node)
        node.disk = self._new_disk()
        node.joining = True
        self._start(node)
        if self.p.rejoin:
            for _ in range(3):  # while the leader replays the first entries to it
                self._at(self.now + self.rng.uniform(1, 8), _CALL, ("rejoin_chaos", node.id))

    @staticmethod
    def _halt(node: SimNode) -> None:
        """The process is gone: its core, its pending requests, its scheduled events."""
        node.core = None
        node.inc += 1
        node.puts.clear()
        node.reads.clear()

    def _crash(self, node: SimNode, tear: bool = False, fail_stop: bool = False) -> None:
        self.stats["fail_stops" if fail_stop else "crashes"] += 1
        self.trace.append((self.now, "fail_stop" if fail_stop else "crash", node.id))
        self._halt(node)
        if isinstance(node.disk, WalDisk):
            node.disk.fail_stop() if fail_stop else node.disk.crash()
        else:
            node.disk.crash(self.rng, tear)
        delay = (self.rng.uniform(0.2, 3) if self.rng.random() < self.p.quick_restart_p
                 else self.rng.uniform(3, 30))
        self._at(self.now + delay, _RESTART, node.id)
        # every peer that can reach its host redials and is refused while it is down
        for other in self._live():
            if (other, node.id) not in self.net.blocked:
                self._at(self.now + self._gone_rng.uniform(0.3, 1.5), _GONE,
                         (other, node.id, True))

    def leader(self) -> str | None:
        best: tuple[int, str] | None = None
        for nid, n in self.nodes.items():
            if (n.core is not None and n.core.role is Role.LEADER and not n.paused
                    and (best is None or n.core.term > best[0])):
                best = (n.core.term, nid)
        return best[1] if best else None

    def _live(self) -> list[str]:
        return [nid for nid, n in self.nodes.items() if n.core is not None and not n.removed]

    # ------------------------------------------------------------------ the driver
    def _drain(self, node: SimNode) -> None:
        core = node.core
        while core is not None:
            rd = core.ready()
            if rd is None:
                return
            self.steps += 1
            p = self.p.crash_ready_p if (rd.entries or rd.hard_state) else 0.0
            if core.log.committed != node.commit:  # decided now, whatever happens next
                self.oracle.on_commit(node.id, core, node.commit, core.log.committed)
                if core.role is Role.LEADER:
                    self._check_commit_safe(node.id, core)
                if core.role is Role.LEADER and node.commit < core.log.last_index:
                    p += self.p.crash_commit_p
                node.commit = core.log.committed
            point = -1
            if rd.soft_state is not None or (
                rd.hard_state is not None and (core.term, core.vote) != node.last_vote
            ):
                node.last_vote = (core.term, core.vote)
                p += self.p.crash_vote_p
            if p and self.rng.random() < p:
                point = self.rng.randrange(4)
            if (self.p.vote_crash_p and any(isinstance(x, m.VoteResponse) and not x.reject
                                            for x in rd.messages)
                    and self.rng.random() < self.p.vote_crash_p):
                point = 3  # the voter dies once its vote is out: does it remember it?
            if (self.p.isolate_winner_p and rd.soft_state is not None
                    and rd.soft_state.role is Role.LEADER
                    and self.rng.random() < self.p.isolate_winner_p):
                # cut off before its first append leaves: rival candidates of its term stay
                # candidates, and their retried requests meet voters that already voted
                self.net.blocked = partition("isolate_leader", sorted(self.nodes), node.id,
                                             self.rng)
                self.trace.append((self.now, "partition", ("isolate", node.id)))
                self._at(self.now + self.rng.uniform(5, 20), _HEAL, None)
            order = plan(rd, node.synced)  # the overlaps loomd's driver runs, too
            early, late = order.early, order.late
            if (self.p.crash_win_p and rd.soft_state is not None
                    and rd.soft_state.role is Role.LEADER and rd.entries
                    and self.rng.random() < self.p.crash_win_p):
                # A new leader dies once its first entry is durable, and its replication of
                # that entry, handed to the transport early, dies with the process before any
                # of it reached the wire: an entry of the newest term that only it holds.
                point, early = 2, ()
            if self.p.mutant == "ack_before_sync":
                early, late = rd.messages, ()  # votes and acks leave before the sync
            self._send(early)
            if order.apply_first:
                self._apply(node, core, rd)
            if point == 0:
                return self._crash(node)
            for chunk in rd.snapshot_chunks:
                node.rx.write(chunk)
            snap = None
            if rd.snapshot is not None:
                snap = Snapshot(rd.snapshot, node.rx.take(rd.snapshot))
                core.snapshot_stored(rd.snapshot.index, BytesSource(snap.data))
            try:
                node.disk.save(rd.hard_state, rd.entries, snap)
            except FatalIOError:
                return self._crash(node, fail_stop=True)
            if rd.entries:
                self.oracle.on_persist(node.id, core, rd.entries)
            if point == 1:
                return self._crash(node, tear=True)
            if rd.must_sync:
                try:
                    node.disk.sync()
                except FatalIOError:
                    return self._crash(node, fail_stop=True)
                if rd.hard_state is not None:
                    node.synced = rd.hard_state
            if point == 2:
                return self._crash(node)
            delay = node.disk.take_delay() if isinstance(node.disk, WalDisk) else 0.0
            self._send(late, delay)
            if point == 3:
                return self._crash(node)
            if not order.apply_first:
                self._apply(node, core, rd, snap)
            self._serve_reads(node, rd)
            core.advance(rd)
            if node.joining and not core.joining:
                # after the write: the entries that brought it up to date are durable now
                node.joining = False
                self.stats["joined"] += 1
            if node.applied - core.snapshot_meta.index >= self.p.snapshot_every:
                try:
                    self._take_snapshot(node, core)
                except FatalIOError:
                    return self._crash(node, fail_stop=True)

    def _log_view(self, nid: str) -> tuple[int, int, int, Callable[[int], int | None]]:
        """(offset, last index, last term, term_at) of a node's log: in memory if it is up,
        on its disk if it is down."""
        n = self.nodes[nid]
        if n.core is not None:
            log = n.core.log
            return log.offset, log.last_index, log.last_term(), log.term
        disk = n.disk
        off, li, lt, terms = (disk.durable_tail() if isinstance(disk, WalDisk)
                              else durable_tail(disk))
        return off, li, lt, terms.get

    def _check_commit_safe(self, nid: str, core: RaftCore) -> None:
        """Commit safety: no node lacking the newly committed entry could win an election,
        i.e. no such node's log is at least as up-to-date as the logs of a majority."""
        q = core.log.committed
        term = core.log.term(q)
        voters = [v for v in core.conf.voters if v in self.nodes]
        views = {v: self._log_view(v) for v in voters}
        for x in voters:
            off, li, lt, term_at = views[x]
            if q <= off or term_at(q) == term:
                continue
            behind = sum(
                1 for v in voters
                if lt > views[v][2] or (lt == views[v][2] and li >= views[v][1])
            )
            if behind >= majority(len(core.conf.voters)):
                raise Violation(
                    f"commit safety: {nid} committed index {q} (term {term}) in term "
                    f"{core.term}, but {x} lacks it and its log (last {li}/{lt}) is at least "
                    f"as up-to-date as {behind} voters'"
                )

    def _send(self, msgs: tuple[m.Message, ...], delay: float = 0.0) -> None:
        for msg in msgs:
            wire = m.from_wire(msg.to_wire())  # every message crosses the strict codec
            for t in self.net.deliveries(msg.frm, msg.to, self.now + delay):
                self._at(t, _DELIVER, wire)
            if (self.p.vote_retry_p and isinstance(msg, m.RequestVote)
                    and self.rng.random() < self.p.vote_retry_p):
                # the candidate retries an unanswered request (Raft's RPCs are retried); a
                # voter that crashed and came back meanwhile hears the same request again
                for t in self.net.deliveries(msg.frm, msg.to, self.now + self.rng.uniform(1, 6)):
                    self._at(t, _DELIVER, wire)

    def _apply(self, node: SimNode, core: RaftCore, rd: Ready,
               snap: Snapshot | None = None) -> None:
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self.stats["elections"] += 1
            self.trace.append((self.now, "leader", (node.id, core.term)))
            self.oracle.on_leader(node.id, core)
            if self.p.leader_chaos and self.rng.random() < self.p.leader_chaos:
                self._at(self.now + self.rng.uniform(0, 3), _CALL, ("chaos", node.id))
        if snap is not None:
            node.kv = dict(json.loads(snap.data))
            node.applied = snap.meta.index
            self.stats["snapshots"] += 1
        for e in rd.committed_entries:
            if e.index != node.applied + 1:
                raise Violation(f"monotonic apply: {node.id} applied {e.index} after "
                                f"{node.applied}")
            self.oracle.on_apply(node.id, e)
            node.applied = e.index
            if e.type is EntryType.NORMAL:
                op_id, key, value = e.data.decode().split("\x00")
                node.kv[key] = value
                op = node.puts.pop(op_id, None)
                if op is not None:
                    self._complete(op, None)
            elif e.type is EntryType.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                if cc.type is ConfChangeType.REMOVE and cc.node in self.nodes:
                    self.nodes[cc.node].removed = True
                elif cc.type is ConfChangeType.READMIT and cc.node in self.nodes:
                    self.nodes[cc.node].removed = False

    def _serve_reads(self, node: SimNode, rd: Ready) -> None:
        for rs in rd.read_states:
            op = node.reads.get(rs.ctx)
            if op is not None:
                self.oracle.on_read(node.id, rs.ctx, rs.index, op.floor)
                node.ready_reads.append((rs.index, rs.ctx))
        if node.ready_reads:
            still = []
            for index, ctx in node.ready_reads:
                op = node.reads.get(ctx)
                if op is None:
                    continue
                if index <= node.applied:
                    del node.reads[ctx]
                    self._complete(op, node.kv.get(op.key))
                else:
                    still.append((index, ctx))
            node.ready_reads = still

    def _take_snapshot(self, node: SimNode, core: RaftCore) -> None:
        data = json.dumps(node.kv, sort_keys=True).encode()
        meta = core.snapshot_taken(node.applied, data)
        node.disk.save_snapshot(Snapshot(meta, data))

    # ------------------------------------------------------------------ clients
    def _client(self, c: int) -> None:
        if self.now > self.p.duration + self.p.quiet - 15:
            return
        live = self._live()
        guess = self.leader_guess[c]
        target = guess if guess in live else (self.rng.choice(live) if live else None)
        if target is None:
            self._at(self.now + 2, _CLIENT, c)
            return
        node = self.nodes[target]
        self._seq += 1
        key = f"k{self.rng.randrange(self.p.keys)}"
        op_id = f"c{c}.{self._seq}"
        kind = "get" if self.rng.random() < self.p.read_ratio else "put"
        op = PendingOp(op_id, c, key, kind, op_id if kind == "put" else None, self.now, target)
        if node.paused or node.core is None:
            self._at(self.now + 1, _CLIENT, c)  # connection refused: definitely not done
            return
        core = node.core
        res: int | NotLeader | Busy | None
        if kind == "put":
            res = core.propose(f"{op_id}\x00{key}\x00{op_id}".encode())
            if isinstance(res, int):
                node.puts[op_id] = op
        else:
            op.floor = self.oracle.max_commit
            res = core.read_index(op_id.encode())
            if res is None:
                node.reads[op_id.encode()] = op
        if isinstance(res, NotLeader | Busy):
            if isinstance(res, NotLeader):
                self.leader_guess[c] = res.leader
            self._at(self.now + self.rng.uniform(0.5, 2), _CLIENT, c)
            return
        self.trace.append((self.now, "call", (target, op_id, kind, key)))
        self.in_flight[op_id] = op
        if kind == "put":
            self.stats["puts"] += 1
        self._at(self.now + self.p.op_timeout, _TIMEOUT, op)
        self._drain(node)

    def _complete(self, op: PendingOp, result: str | None) -> None:
        if self.in_flight.pop(op.op_id, None) is None:
            return  # answered or timed out already
        self.leader_guess[op.client] = op.node
        if op.kind == "put":
            self.stats["acked"] += 1
            self.history.append(Op(op.key, "put", op.value, op.call, self.now))
        else:
            self.stats["reads"] += 1
            self.history.append(Op(op.key, "get", result, op.call, self.now))
        self.trace.append((self.now, "ok", (op.op_id, result)))
        self._at(self.now + self.rng.uniform(0.2, 3), _CLIENT, op.client)

    def _timeout(self, op: PendingOp) -> None:
        if self.in_flight.pop(op.op_id, None) is None:
            return
        if op.kind == "put":
            self.history.append(Op(op.key, "put", op.value, op.call, math.inf))
        self.leader_guess[op.client] = None
        self._at(self.now + 1, _CLIENT, op.client)

    # ------------------------------------------------------------------ nemeses
    def _nemesis(self) -> None:
        if self.now >= self.p.duration:
            return
        self._at(self.now + self.rng.uniform(0.5, 1.5) * self.p.nemesis_every, _NEMESIS, None)
        live = self._live()
        leader = self.leader()
        if leader is not None and self._gone_rng.random() < FALSE_GONE_P:
            told = self._gone_rng.choice(live)
            self._at(self.now + self._gone_rng.uniform(0, 5), _GONE, (told, leader, False))
        kind = self.rng.choices(NEMESES, self.p.nemeses)[0]
        if kind == "partition":
            shape = self.rng.choice(self.p.partitions or PARTITIONS)
            self.stats["partitions"] += 1
            self.net.blocked = partition(shape, sorted(self.nodes), leader, self.rng)
            self.trace.append((self.now, "partition", shape))
            self._at(self.now + self.rng.uniform(5, 40), _HEAL, None)
        elif kind == "crash":
            down = sum(1 for n in self.nodes.values() if n.core is None)
            if down < (len(self.nodes) - 1) // 2 and live:
                victim = leader if leader and self.rng.random() < 0.5 else self.rng.choice(live)
                self._crash(self.nodes[victim])
        elif kind == "pause" and live:
            victim = leader if leader and self.rng.random() < 0.5 else self.rng.choice(live)
            node = self.nodes[victim]
            if not node.paused:
                node.paused = True
                self.trace.append((self.now, "pause", victim))
                self._at(self.now + self.rng.uniform(3, 40), _RESUME, victim)
        elif kind == "clock" and live:
            self._clock_fault(live, leader)
        elif kind == "transfer" and leader is not None:
            self._transfer(leader)
        elif kind == "membership" and leader is not None:
            self._membership(leader)

    def _clock_fault(self, live: list[str], leader: str | None) -> None:
        """A new rate within the profile's drift (sometimes a stall), or a forward jump.
        With lease reads on, rates stay within the bound the lease assumes and only a
        leader's clock jumps: that only shortens its own lease (loom.sim.clock)."""
        node = self.nodes[self.rng.choice(live)]
        if self.rng.random() < 0.5:
            if self.rng.random() < self.p.stall_p:
                rate = self.rng.uniform(0.02, 0.1)  # the clock barely moves
                self._at(self.now + self.rng.uniform(3, 30), _CALL, ("unstall", node.id))
            else:
                rate = self._draw_rate()
            self.stats["clock_rates"] += 1
            self.trace.append((self.now, "clock_rate", (node.id, round(rate, 4))))
            node.clock.set_rate(self.now, rate)
            if node.core is not None:
                self._schedule_tick(node)
            return
        if self.p.lease_reads:
            if leader is None:
                return
            node = self.nodes[leader]
        self._clock_jump(node, self.rng.uniform(5, 40))

    def _clock_jump(self, node: SimNode, by: float) -> None:
        if node.paused or node.core is None:
            return
        self.stats["clock_jumps"] += 1
        self.trace.append((self.now, "clock_jump", (node.id, round(by, 3))))
        crossed = node.clock.jump(self.now, by)
        self._schedule_tick(node)
        self._ticks(node, crossed)

    def _transfer(self, leader: str) -> None:
        core = self.nodes[leader].core
        assert core is not None
        others = [v for v in core.conf.voters if v != leader]
        if others:
            to = self.rng.choice(others)
            self.stats["transfers"] += 1
            self.trace.append((self.now, "transfer", (leader, to)))
            core.transfer_leadership(to)
            self._drain(self.nodes[leader])
            if self.rng.random() < 0.3:  # graceful shutdown: stop once it handed over
                self._at(self.now + 6, _CALL, ("stop", leader))

    def _membership(self, leader: str) -> None:
        node = self.nodes[leader]
        core = node.core
        assert core is not None
        conf = core.conf
        cc: ConfChange | None = None
        back = [n for n in conf.removed if n in self.nodes]
        if conf.learners:
            cc = ConfChange(ConfChangeType.ADD_VOTER, conf.learners[0])
        elif back and len(conf.voters) < 5 and (self.p.rejoin or self.rng.random() < 0.5):
            # An operator re-admits a removed node: with its old disk, or wiped (a new
            # machine under the old name), which must not let it vote twice in a term.
            nid = self.rng.choice(back)
            if self.p.rejoin or self.rng.random() < 0.5:
                self._wipe(self.nodes[nid])
            cc = ConfChange(ConfChangeType.READMIT, nid)
        elif len(conf.voters) < 5 and len(self.nodes) < 9:
            nid = f"n{self.next_node}"  # ids are never reused
            self.next_node += 1
            self._add_node(nid)
            cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        elif len(conf.voters) > 3 or (self.p.rejoin and len(conf.voters) > 2):
            if self.p.rejoin and leader == min(conf.voters):
                return self._transfer(leader)  # the lowest founder goes first, as a follower
            cands = [v for v in conf.voters if v != leader]
            victim = min(cands) if self.p.rejoin else self.rng.choice(cands)
            cc = ConfChange(ConfChangeType.REMOVE, victim)
        if cc is not None:
            res = core.propose_conf_change(cc)
            self.trace.append((self.now, "conf_change", (cc, res)))
            if isinstance(res, int):
                self.stats["conf_changes"] += 1
                if cc.type is ConfChangeType.READMIT:
                    self.stats["readmits"] += 1
            self._drain(node)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        end = self.p.duration + self.p.quiet
        heap = self._heap
        while heap:
            t, _, kind, payload = heapq.heappop(heap)
            if t > end:
                break
            self.now = t
            if kind == _TICK:
                nid, inc = cast(tuple[str, int], payload)
                node = self.nodes[nid]
                if node.inc != inc or node.core is None:
                    continue
                self._at(node.clock.ticked(), _TICK, payload)
                if node.paused:
                    node.missed += 1
                    continue
                node.core.tick()
                self._drain(node)
            elif kind == _DELIVER:
                assert isinstance(payload, m.Message)
                node = self.nodes[payload.to]
                if node.core is None:
                    continue
                if node.paused:
                    node.deferred.append(payload)
                    continue
                self.trace.append((t, "recv", payload))
                node.core.step(payload)
                self._drain(node)
            elif kind == _CLIENT:
                assert isinstance(payload, int)
                self._client(payload)
            elif kind == _TIMEOUT:
                assert isinstance(payload, PendingOp)
                self._timeout(payload)
            elif kind == _NEMESIS:
                self._nemesis()
            elif kind == _HEAL:
                self.net.heal()
                self.trace.append((t, "heal", None))
            elif kind == _RESTART:
                assert isinstance(payload, str)
                node = self.nodes[payload]
                if node.core is None:
                    self.trace.append((t, "restart", payload))
                    self._start(node)
            elif kind == _RESUME:
                assert isinstance(payload, str)
                self._resume(self.nodes[payload])
            elif kind == _GONE:
                nid, peer, only_if_down = cast(tuple[str, str, bool], payload)
                node = self.nodes[nid]
                if (node.core is None or node.paused
                        or (only_if_down and self.nodes[peer].core is not None)):
                    continue  # a paused process dials nothing; a restarted peer listens again
                self.stats["gone_hints"] += 1
                self.trace.append((t, "gone", (nid, peer)))
                node.core.peer_gone(peer)
                self._drain(node)
            elif kind == _CALL:
                what, nid = cast(tuple[str, str], payload)
                node = self.nodes[nid]
                if what == "unstall":  # the stalled clock runs again (the machine's clock)
                    node.clock.set_rate(t, self._draw_rate())
                    self.trace.append((t, "clock_rate", (nid, round(node.clock.rate, 4))))
                    if node.core is not None:
                        self._schedule_tick(node)
                    continue
                if node.core is None:
                    continue
                if what == "stop" and node.core.role is not Role.LEADER:
                    self._crash(node)  # graceful stop after handing leadership over
                elif what == "rejoin_chaos" and t < self.p.duration:
                    self._rejoin_chaos(node)
                elif what == "chaos" and t < self.p.duration:
                    if self.rng.random() < 0.5:
                        self._crash(node, tear=True)
                    else:
                        self.net.blocked = partition("isolate_leader", sorted(self.nodes), nid,
                                                     self.rng)
                        self.trace.append((t, "partition", ("isolate", nid)))
                        self._at(t + self.rng.uniform(5, 30), _HEAL, None)
            if t >= self.p.duration and self.net.blocked:
                self.net.heal()
        # What is still in flight at the end is indeterminate, as if it had timed out: a put
        # that reached the log before its node crashed may be observed by a read that returned.
        for op in list(self.in_flight.values()):
            self._timeout(op)
        self.check_history()

    def _rejoin_chaos(self, node: SimNode) -> None:
        """The empty node holds only the log's first entries: crash its leader and jump its
        clock, so that it would campaign at once on what it holds if it were allowed to."""
        core = node.core
        leader = self.leader()
        if core is None or not 0 < core.log.last_index <= 8 or leader is None:
            return
        self.stats["rejoin_chaos"] += 1
        self._crash(self.nodes[leader])
        self._clock_jump(node, self.rng.randrange(20, 40))

    def _resume(self, node: SimNode) -> None:
        if not node.paused or node.core is None:
            return
        node.paused = False
        self.trace.append((self.now, "resume", node.id))
        missed, node.missed = node.missed, 0
        self._ticks(node, missed)  # the monotonic clock moved on while we were stopped
        deferred, node.deferred = node.deferred, []
        for msg in deferred:
            core = self._core_of(node)  # a delivery may crash it at a persistence point
            if core is None:
                return
            core.step(msg)
            self._drain(node)

    @staticmethod
    def _core_of(node: SimNode) -> RaftCore | None:
        return node.core

    def _ticks(self, node: SimNode, count: int) -> None:
        for _ in range(count):
            core = node.core
            if core is None:  # crashed at a persistence point meanwhile
                return
            core.tick()
            self._drain(node)

    def check_history(self) -> None:
        bad = check_history(self.history)
        for r in bad:
            if r.ok is False:
                ops = sorted((o for o in self.history if o.key == r.key), key=lambda o: o.call)
                lines = "\n".join(f"    {o}" for o in ops[-30:])
                raise Violation(f"linearizability: history of key {r.key} is not "
                                f"linearizable; last operations:\n{lines}")

    def format_trace(self) -> str:
        return "\n".join(f"  t={t:9.3f} {what:<11} {detail}" for t, what, detail in self.trace)
