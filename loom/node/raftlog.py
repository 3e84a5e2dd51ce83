"""The Raft driver: the only writer of state, behind the same `Replicator` seam as before.

One task owns the consensus core. Everything reaches it through one bounded inbox (ticks, peer
messages, proposals, reads, admin requests) and it acts in the order the core's Ready contract
demands (loom/raft/ready.py):

    drain inbox -> core.step/tick/propose/read_index ...
    while core.has_ready():
        rd = core.ready(); order = plan(rd, synced)      (the overlaps the contract allows)
        send order.early                                 (a leader's AppendEntries/heartbeats)
        apply rd.committed_entries if order.apply_first  (already durable on a majority)
        persist rd.snapshot, rd.entries, rd.hard_state  (one storage call, fsync if must_sync,
                                                          in a worker thread: group commit)
        install rd.snapshot; send order.late             (votes, acks: they depend on the sync)
        apply rd.committed_entries otherwise             (a Ready with a snapshot: strictly)
        answer rd.read_states once applied >= index      (linearizable reads, no log write)
        core.advance(rd)

Invariants:
- A proposal is answered only when the entry at its index is applied here. If the entry applied
  at that index has another term, a different leader's entry won the slot: the write was not
  applied and the caller hears UNAVAILABLE (safe to retry). If the node loses contact instead,
  the caller's deadline expires and the outcome is reported as unknown (TIMEOUT).
- Nothing is acknowledged before the fsync of the batch that holds it returned; an fsync failure
  stops the node (storage raises FatalIOError; this task lets it escape and the node exits).
- Reads are linearizable: every pending read of one inbox turn shares one ReadIndex request;
  each is served from the state machine once the applied index reaches the read index.
- The state machine sees only committed entries, in order, exactly once per boot; a snapshot
  (state + member addresses) replaces it wholesale.
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import cbor2
import trio

from loom.node import snapshotter
from loom.node.config import RaftSettings, raft_config
from loom.node.replicator import Applied, OnDone
from loom.raft import (
    Busy as RaftBusy,
)
from loom.raft import (
    ConfChange,
    ConfChangeType,
    Message,
    NotLeader,
    RaftCore,
    Ready,
    Role,
)
from loom.raft.confchange import bootstrap
from loom.raft.ready import plan
from loom.raft.types import EntryType, SnapshotMeta
from loom.state.command import Command, Outcome
from loom.state.limits import StateLimits
from loom.state.machine import StateMachine
from loom.storage.aio import AsyncStorage
from loom.storage.errors import DiskFullError
from loom.storage.storage import Recovered, Storage
from loom.wire import errors as E

log = logging.getLogger("loom.raft")

StructureId = tuple[str, str]
SNAPSHOT_CHUNK = 1 << 20
# Below this estimated state size a snapshot is serialised on the driver task: it takes tens of
# milliseconds (far inside an election timeout), less than forking, copy-on-write faults and
# the pipe would cost. Above it, in a forked child (snapshotter.py).
FORK_ABOVE_BYTES = 16 << 20


class _Waiter:
    """One caller waiting for the driver (a proposal, a read, an admin request). Its callback
    runs exactly once: whichever of resolve/fail comes first wins, the rest are no-ops."""

    __slots__ = ("cmd", "deadline", "on_done", "term", "what")

    def __init__(self, cmd: Command | None, on_done: OnDone, deadline: float, what: str) -> None:
        self.cmd = cmd
        self.on_done: OnDone | None = on_done
        self.deadline = deadline  # trio time; the ticker fails it with TIMEOUT after this
        self.what = what
        self.term = 0

    def resolve(self, outcome: Outcome) -> None:
        self._call(outcome, None)

    def fail(self, err: E.LoomError) -> None:
        self._call(None, err)

    def _call(self, outcome: Outcome | None, err: E.LoomError | None) -> None:
        cb = self.on_done
        if cb is None:
            return
        self.on_done = None
        try:
            cb(outcome, err)
        except Exception:  # a caller's bug must never stop the driver that called it
            log.exception("error in the completion of %s", self.what)


def _chunks(data: bytes) -> list[bytes]:
    """A snapshot as storage takes it: chunks of SNAPSHOT_CHUNK bytes (one empty one if none)."""
    return [data[i:i + SNAPSHOT_CHUNK] for i in range(0, len(data), SNAPSHOT_CHUNK)] or [b""]


async def _completion(start: Callable[[OnDone], None]) -> Outcome:
    """Await what `start` submits with a callback (the task-per-request form)."""
    done = trio.Event()
    box: list[tuple[Outcome | None, E.LoomError | None]] = []

    def on_done(out: Outcome | None, err: E.LoomError | None) -> None:
        box.append((out, err))
        done.set()

    start(on_done)
    await done.wait()
    out, err = box[0]
    if err is not None:
        raise err
    assert out is not None
    return out


def prepare_storage(storage: Storage, recovered: Recovered, founders: list[str] | None
                    ) -> Recovered:
    """First start of a founding member: persist the bootstrap configuration (one committed
    ADD_VOTER entry per founder). A joining node (founders None) starts empty and learns the
    configuration from the leader."""
    empty = (recovered.hard_state.term == 0 and not recovered.entries
             and recovered.snapshot is None)
    if not empty or founders is None:
        return recovered
    hs, ents = bootstrap(tuple(founders))
    storage.save(hs, list(ents), must_sync=True)
    return Recovered(hs, None, list(ents), [], 0)


class RaftLog:
    def __init__(
        self, settings: RaftSettings, storage: Storage, recovered: Recovered, *,
        node_id: str, client_addr: str, inbox: int,
        member_addrs: dict[str, str],
        on_applied: Callable[[Applied], None] | None = None,
        on_leader: Callable[[], None] | None = None,
        limits: StateLimits = StateLimits(),  # noqa: B008 - immutable
    ) -> None:
        self.s = settings
        self.id = node_id
        self.client_addr = client_addr
        self.tick_s = settings.tick_ms / 1000
        self._storage = AsyncStorage(storage)
        self._on_applied = on_applied
        self._on_leader = on_leader
        self.member_addrs = dict(member_addrs)  # peer addresses, replicated via snapshots
        snap_data = b""
        if recovered.snapshot is not None:
            reader = storage.load_snapshot()
            assert reader is not None, "recovered a snapshot that cannot be read"
            snap_data = b"".join(reader.chunks())
        self._limits = limits
        self._sm = self._restore(snap_data) if snap_data else StateMachine(limits)
        rcfg = raft_config(node_id, settings)
        seed = int.from_bytes(os.urandom(8), "big")  # election jitter only; never in apply
        self.core = RaftCore(rcfg, random.Random(seed), recovered.hard_state, recovered.snapshot,
                             recovered.entries, snap_data)
        self._last_snapshot = recovered.snapshot.index if recovered.snapshot else 0
        self._synced = recovered.hard_state  # the hard state last made durable
        self._last_snapshot_bytes = 0  # size of the last snapshot we took (0: none yet)
        self._log_bytes_since_snapshot = 0
        self._snapshot_child: int | None = None  # index being serialised in a child process
        self._built: tuple[int, bytes | None] | None = None  # its result, back in the inbox
        self.snapshots_taken = 0
        self.snapshots_forked = 0  # of which serialised in a child
        self.transfers_started = 0  # leadership transfers this node began as leader
        self._nursery: trio.Nursery | None = None
        self._send, self._recv = trio.open_memory_channel[tuple[str, Any]](inbox)
        self._proposals: dict[int, _Waiter] = {}
        self._read_batches: dict[bytes, list[_Waiter]] = {}
        self._reads_ready: list[tuple[int, list[_Waiter]]] = []  # (read index, waiters)
        self._read_seq = 0
        self._events: dict[StructureId, trio.Event] = {}
        self._pending_reads: list[_Waiter] = []
        # Every waiter, in submission order, per timeout (so deadlines are non-decreasing and
        # the ticker expires them from the front). Completed ones are skipped and popped.
        self._write_deadlines: deque[_Waiter] = deque()
        self._read_deadlines: deque[_Waiter] = deque()
        self.transport: Any = None  # PeerTransport, set by the node before run()
        self._running = False
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self._role_changed = trio.Event()  # set (and replaced) whenever role or leader changes
        self.batches = 0
        self.entries_persisted = 0
        self.dropped_messages = 0
        self.disk_full = False
        self._next_tick_at = 0.0
        # Every committed entry this node has applied, no-op and membership entries included
        # (the state machine's own index counts only its commands). Reads compare with this.
        self._applied = recovered.snapshot.index if recovered.snapshot else 0

    # -- snapshots of the node's replicated state --------------------------------------------
    def _restore(self, data: bytes) -> StateMachine:
        doc = cbor2.loads(data)
        self.member_addrs.update(doc.get("members", {}))
        return StateMachine.restore(doc["sm"], self._limits)

    def _snapshot_blob(self) -> bytes:
        return bytes(cbor2.dumps({"sm": self._sm.snapshot(), "members": self.member_addrs}))

    # -- Replicator interface ------------------------------------------------------------------
    def state(self) -> StateMachine:
        return self._sm

    def _submit(self, kind: str, payload: Any) -> None:
        if not self._running:
            raise E.Unavailable("the node is not serving (starting or stopping)")
        try:
            self._send.send_nowait((kind, payload))
        except trio.WouldBlock:
            raise E.Busy("the log driver is saturated; retry later", retry_after_ms=50) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise E.Unavailable("the node is stopping") from None

    def submit(self, cmd: Command, *, read: bool, on_done: OnDone,
               stale: bool = False) -> None:
        """Start a write (or a linearizable read) without waiting for it: `on_done` runs once,
        in this trio run, when the entry is applied (the read served), refused, or its deadline
        passes. Raises when it cannot even start (BUSY, UNAVAILABLE, LIMIT_EXCEEDED). A stale
        read is answered at once from this node's replica, whatever its role."""
        now = trio.current_time()
        if read:
            if stale or (self.role is Role.LEADER and self.core.conf.voters == (self.id,)):
                # A cluster of one is its own majority: every acknowledged write is already
                # applied here and no other node can lead, so the state machine answers now.
                on_done(self._sm.read(cmd), None)
                return
            w = _Waiter(cmd, on_done, now + self.s.read_timeout_s, f"the read {cmd.op}")
            self._submit("read", w)
            self._read_deadlines.append(w)
            return
        if self.disk_full:
            raise E.LimitExceeded("the node's disk is full; writes are refused until space "
                                  "returns", retry_after_ms=1000)
        w = _Waiter(cmd, on_done, now + self.s.proposal_timeout_s, f"the write {cmd.op}")
        self._submit("propose", w)
        self._write_deadlines.append(w)

    async def propose(self, cmd: Command) -> Outcome:
        return await _completion(lambda done: self.submit(cmd, read=False, on_done=done))

    async def read(self, cmd: Command, *, stale: bool = False) -> Outcome:
        return await _completion(
            lambda done: self.submit(cmd, read=True, on_done=done, stale=stale))

    def changed_event(self, structure: StructureId) -> trio.Event:
        ev = self._events.get(structure)
        if ev is None:
            ev = self._events[structure] = trio.Event()
        return ev

    async def admin(self, what: str, **kw: Any) -> Any:
        """Membership changes and leadership transfer, run by the driver task."""
        def start(on_done: OnDone) -> None:
            w = _Waiter(None, on_done, trio.current_time() + self.s.proposal_timeout_s, what)
            self._submit("admin", (what, kw, w))
            self._write_deadlines.append(w)

        return (await _completion(start)).value

    def on_peer_message(self, msg: Message) -> None:
        try:
            self._send.send_nowait(("msg", msg))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped_messages += 1  # Raft tolerates loss; the sender retries

    def is_member(self, node: str) -> bool:
        c = self.core.conf
        return node in c.voters or node in c.learners

    def leader_addr(self) -> str | None:
        if self.leader is None:
            return None
        if self.leader == self.id:
            return self.client_addr
        if self.transport is not None:
            addr: str | None = self.transport.client_addr_of(self.leader)
            return addr
        return None

    def not_leader(self) -> E.NotLeader:
        if self.leader is None:
            return E.NotLeader("no leader is known yet (election in progress); retry",
                               leader=None, leader_addr=None)
        return E.NotLeader(f"{self.id} is not the leader; {self.leader} is",
                           leader=self.leader, leader_addr=self.leader_addr())

    def statistics(self) -> dict[str, Any]:
        return {
            "node": self.id, "role": self.role.value, "term": self.core.term,
            "leader": self.leader, "commit_index": self.core.log.committed,
            "applied_index": self._sm.applied_index,
            "last_index": self.core.log.last_index, "snapshot_index": self._last_snapshot,
            "batches": self.batches, "entries_persisted": self.entries_persisted,
            "entries_per_batch": round(self.entries_persisted / self.batches, 2)
            if self.batches else 0.0,
            "dropped_peer_messages": self.dropped_messages,
            "snapshots_taken": self.snapshots_taken,
            "snapshots_forked": self.snapshots_forked,
            "snapshot_building_at": self._snapshot_child,
            "transfers_started": self.transfers_started,
        }

    def cluster_status(self) -> dict[str, Any]:
        c = self.core.conf
        members = []
        for nid in sorted({*c.voters, *c.learners}):
            pr = self.core.progress.get(nid) if self.role is Role.LEADER else None
            reach: bool | None = None
            if nid == self.id:
                reach = True
            elif self.transport is not None:
                reach = bool(self.transport.reachable(nid))
            members.append({
                "id": nid, "voter": nid in c.voters, "peer_addr": self.member_addrs.get(nid),
                "client_addr": self.client_addr if nid == self.id else (
                    self.transport.client_addr_of(nid) if self.transport else None),
                "reachable": reach, "match_index": pr.match if pr is not None else None,
            })
        role = self.role.value
        if self.id in c.learners:
            role = "learner"
        return {"node": self.id, "role": role, "term": self.core.term,
                "commit_index": self.core.log.committed,
                "applied_index": self.core.log.applied, "leader": self.leader,
                "leader_addr": self.leader_addr(), "members": members}

    # -- the driver task -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running = True
            await self._catch_up_alone()
            self._next_tick_at = trio.current_time() + self.tick_s
            nursery.start_soon(self._ticker)
            task_status.started()
            try:
                await self._loop()
            finally:
                self._running = False
                nursery.cancel_scope.cancel()
                stopping = E.Unavailable("the node stopped before this request completed")
                for dq in (self._write_deadlines, self._read_deadlines):
                    while dq:
                        dq.popleft().fail(stopping)

    async def _catch_up_alone(self) -> None:
        """Apply what the log already holds; a cluster of one elects itself at once instead of
        waiting an election timeout (nobody else can be leader)."""
        await self._process_ready()
        if list(self.core.conf.voters) == [self.id]:
            for _ in range(4 * self.s.election_ticks_max):
                if self.core.role is Role.LEADER:
                    break
                self.core.tick()
                await self._process_ready()

    async def _ticker(self) -> None:
        """Wakes the driver once a tick (how many ticks elapsed is read from the clock) and
        fails the waiters whose deadline passed. The ticker, not the driver, does the latter,
        so callers hear TIMEOUT even while the driver waits on a slow or full disk."""
        while True:
            await trio.sleep(self.tick_s)
            self._expire(trio.current_time())
            try:
                self._send.send_nowait(("tick", None))
            except trio.WouldBlock:
                pass  # the driver is busy; it catches up from the clock on its next turn
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return

    def _expire(self, now: float) -> None:
        for dq, timeout_s in ((self._write_deadlines, self.s.proposal_timeout_s),
                              (self._read_deadlines, self.s.read_timeout_s)):
            while dq and (dq[0].on_done is None or dq[0].deadline <= now):
                w = dq.popleft()
                if w.on_done is not None:
                    w.fail(E.Timeout(f"{w.what} did not complete within {timeout_s:g} s; "
                                     "its outcome is unknown"))

    def _catch_up_ticks(self) -> None:
        """Give the core every tick the monotonic clock says has elapsed, before the turn's
        reads. Time spent paused (SIGSTOP, a stalled VM, a long fsync) therefore counts: a
        leader that was away longer than its lease steps down or stops trusting the lease
        before it could answer a read (ticks are the core's only clock)."""
        now = trio.current_time()
        n = 0
        while now >= self._next_tick_at and n < 100_000:
            self.core.tick()
            self._next_tick_at += self.tick_s
            n += 1
        if now >= self._next_tick_at:  # absurdly far behind: resynchronise
            self._next_tick_at = now + self.tick_s

    async def _loop(self) -> None:
        async with self._recv:
            async for first in self._recv:
                # Order within a turn: what peers and clients sent first (a stall must not make
                # a healthy leader step down, or a follower campaign, before it reads the
                # messages already waiting for it), then the ticks that elapsed, and the reads
                # last, so a read is only ever checked against a lease the ticks have aged.
                self._handle(first)
                for _ in range(4096):  # everything queued now joins this turn (bounded)
                    try:
                        self._handle(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                self._catch_up_ticks()
                self._flush_reads()
                await self._process_ready()

    def stop(self) -> None:
        self._running = False
        self._send.close()

    # -- inputs --------------------------------------------------------------------------------
    def _handle(self, evt: tuple[str, Any]) -> None:
        kind, payload = evt
        if kind == "tick":
            pass  # _catch_up_ticks counts elapsed ticks from the clock
        elif kind == "msg":
            self.core.step(payload)
        elif kind == "propose":
            self._propose(payload)
        elif kind == "read":
            self._pending_reads.append(payload)
        elif kind == "admin":
            self._admin(*payload)
        elif kind == "snapshot":
            self._built = payload  # stored by _maybe_snapshot at the end of this turn

    def _propose(self, w: _Waiter) -> None:
        assert w.cmd is not None
        r = self.core.propose(w.cmd.encode())
        if isinstance(r, NotLeader):
            w.fail(self.not_leader())
        elif isinstance(r, RaftBusy):
            w.fail(E.Busy(f"write refused: {r.reason}", retry_after_ms=100))
        else:
            w.term = self.core.term
            self._proposals[r] = w

    def _flush_reads(self) -> None:
        if not self._pending_reads:
            return
        batch, self._pending_reads = self._pending_reads, []
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        r = self.core.read_index(ctx)
        if isinstance(r, NotLeader):
            err = self.not_leader()
            for w in batch:
                w.fail(err)
        elif isinstance(r, RaftBusy):
            for w in batch:
                w.fail(E.Busy(f"read refused: {r.reason}", retry_after_ms=50))
        else:
            self._read_batches[ctx] = batch

    def _admin(self, what: str, kw: dict[str, Any], w: _Waiter) -> None:
        if what == "transfer":
            to = kw.get("to") or self._best_transferee()
            if to is None:
                w.fail(E.Conflict("no other voter to transfer leadership to"))
                return
            r = self.core.transfer_leadership(to)
            if isinstance(r, NotLeader):
                w.fail(self.not_leader())
            elif isinstance(r, RaftBusy):
                w.fail(E.Conflict(f"cannot transfer leadership: {r.reason}"))
            else:
                self.transfers_started += 1
                w.resolve(Outcome.ok({"to": to}))
            return
        node = kw["node"]
        if what == "add":
            kind = ConfChangeType.ADD_LEARNER if kw.get("learner", True) else \
                ConfChangeType.ADD_VOTER
            if kw.get("readmit"):
                if not kw.get("learner", True):
                    w.fail(E.BadRequest("a re-admitted member comes back as a learner; promote "
                                        "it once it has caught up"))
                    return
                kind = ConfChangeType.READMIT
        elif what == "promote":
            kind = ConfChangeType.ADD_VOTER
        else:
            kind = ConfChangeType.REMOVE
        idx = self.core.propose_conf_change(ConfChange(kind, node))
        if isinstance(idx, NotLeader):
            w.fail(self.not_leader())
        elif isinstance(idx, RaftBusy):
            w.fail(E.Conflict(f"membership change refused: {idx.reason}"))
        else:
            w.term = self.core.term
            self._proposals[idx] = w
            if what == "add":  # only once accepted: a refused add changes no address
                addr = Command("MEMBER_ADDRESS", {"node": node, "peer_addr": kw["peer_addr"]}, 0)
                self._propose_internal(addr.encode())

    def _propose_internal(self, data: bytes) -> None:
        self.core.propose(data)  # answered by nobody; applied by every replica

    def _best_transferee(self) -> str | None:
        best: tuple[int, str] | None = None
        for nid in sorted(self.core.conf.voters):
            if nid == self.id:
                continue
            pr = self.core.progress.get(nid)
            match = pr.match if pr is not None else 0
            if best is None or match > best[0]:
                best = (match, nid)
        return best[1] if best else None

    # -- Ready processing ----------------------------------------------------------------------
    async def _process_ready(self) -> None:
        while self.core.has_ready():
            rd = self.core.ready()
            if rd is None:
                break
            order = plan(rd, self._synced)  # the contract's overlaps (raft/ready.py)
            if order.early and self.transport is not None:
                self.transport.send(order.early)
            conf_changed = self._apply(rd) if order.apply_first else False
            await self._persist(rd)
            if rd.snapshot is not None:
                self._sm = self._restore(rd.snapshot.data)
                self._last_snapshot = rd.snapshot.meta.index
                self._applied = max(self._applied, rd.snapshot.meta.index)
            if order.late and self.transport is not None:
                self.transport.send(order.late)
            if not order.apply_first:
                conf_changed = self._apply(rd)
            for rs in rd.read_states:
                batch = self._read_batches.pop(rs.ctx, None)
                if batch:
                    self._reads_ready.append((rs.index, batch))
            self._serve_reads()
            self.core.advance(rd)  # the core's configuration is current from here on
            if conf_changed or rd.snapshot is not None:
                self._after_membership()
            if rd.soft_state is not None:
                self._on_soft_state(rd)
        await self._maybe_snapshot()

    async def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            await self._storage.save_snapshot(rd.snapshot.meta, _chunks(rd.snapshot.data))
        if rd.entries or rd.hard_state is not None:
            await self._save_until_space(rd)
            if rd.hard_state is not None and rd.must_sync:
                self._synced = rd.hard_state
            if rd.entries:
                self.batches += 1
                self.entries_persisted += len(rd.entries)

    async def _save_until_space(self, rd: Ready) -> None:
        """Disk full: the storage undid the partial write and stays consistent. Writes are
        refused (LIMIT_EXCEEDED) and this same batch is retried until space returns; nothing
        else reaches the core meanwhile, so the Ready/advance contract holds. A failed fsync
        (FatalIOError) is not retried: it escapes and stops the node. Each save is shielded (a
        cancelled caller must not leave a half-known sync behind); the wait between attempts
        is not, so a node whose disk is full can still be stopped."""
        delay = 0.1
        while True:
            try:
                if rd.must_sync or len(rd.entries) > 64:
                    with trio.CancelScope(shield=True):
                        await self._storage.save(rd.hard_state, list(rd.entries),
                                                 rd.must_sync)
                else:
                    # No fsync (a commit-index update, say): one small buffered write, cheaper
                    # here than the hop to a worker thread and back.
                    self._storage.storage.save(rd.hard_state, list(rd.entries), False)
            except DiskFullError as e:
                if not self.disk_full:
                    log.error("%s: disk full, refusing writes until space returns: %s",
                              self.id, e)
                self.disk_full = True
                await trio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            if self.disk_full:
                log.warning("%s: disk space is back; accepting writes again", self.id)
                self.disk_full = False
            return

    def _apply(self, rd: Ready) -> bool:
        """Apply committed entries; True if one of them changed the membership or a member's
        address (the peer links follow both)."""
        conf_changed = False
        for e in rd.committed_entries:
            self._applied = max(self._applied, e.index)
            w = self._proposals.pop(e.index, None)
            if w is not None and w.term != e.term:
                w.fail(E.Unavailable("leadership changed before the write committed; it was "
                                     "not applied (safe to retry)"))
                w = None
            if e.type is EntryType.CONF_CHANGE:
                self._applied_conf(e.data)
                conf_changed = True
                if w is not None:
                    w.resolve(Outcome.ok({"index": e.index}))
                continue
            if e.type is not EntryType.NORMAL or e.index <= self._sm.applied_index:
                continue
            self._log_bytes_since_snapshot += len(e.data)
            cmd = Command.decode(e.data)
            if cmd.op == "MEMBER_ADDRESS":
                self.member_addrs[cmd.body["node"]] = cmd.body["peer_addr"]
                conf_changed = True  # links follow the addresses too
                continue
            outcome = self._sm.apply(cmd, e.index)
            if not outcome.wait:
                for sid in self._sm.changed_structures:
                    ev = self._events.pop(sid, None)
                    if ev is not None:
                        ev.set()
            if self._on_applied is not None:
                self._on_applied(Applied(e.index, cmd, outcome))
            if w is not None:
                w.resolve(outcome)
        return conf_changed

    def _applied_conf(self, data: bytes) -> None:
        try:
            cc = ConfChange.decode(data)
        except ValueError:
            return
        log.info("%s: membership change applied: %s %s", self.id, cc.type.value, cc.node)
        if cc.type is ConfChangeType.REMOVE and cc.node == self.id:
            log.warning("%s: this node was removed from the cluster", self.id)

    def _after_membership(self) -> None:
        """Links follow the configuration: one per current member with a known address."""
        if self.transport is None:
            return
        c = self.core.conf
        members = {*c.voters, *c.learners}
        self.transport.set_peers({n: a for n, a in self.member_addrs.items()
                                  if n in members and n != self.id})

    def _serve_reads(self) -> None:
        if not self._reads_ready:
            return
        applied = self._applied
        still = []
        for index, batch in self._reads_ready:
            if index > applied:
                still.append((index, batch))
                continue
            for w in batch:
                assert w.cmd is not None
                w.resolve(self._sm.read(w.cmd))
        self._reads_ready = still

    def _on_soft_state(self, rd: Ready) -> None:
        ss = rd.soft_state
        assert ss is not None
        was_leader = self.role is Role.LEADER
        self.role, self.leader = ss.role, ss.leader
        self._role_changed.set()
        self._role_changed = trio.Event()
        log.info("%s: %s (leader %s, term %d)", self.id, ss.role.value, ss.leader,
                 self.core.term)
        if was_leader and ss.role is not Role.LEADER:
            # Writes proposed here may still commit under the next leader, or be overwritten:
            # their outcome is unknown now, and saying so at once beats a silent timeout.
            unknown = E.Timeout("leadership was lost before the write committed; it may or "
                                "may not be applied")
            for pw in self._proposals.values():
                pw.fail(unknown)
            err = self.not_leader()
            for batch in self._read_batches.values():
                for w in batch:
                    w.fail(err)
            self._read_batches.clear()
            for _, batch in self._reads_ready:
                for w in batch:
                    w.fail(err)
            self._reads_ready = []
        if ss.role is Role.LEADER and not was_leader and self._on_leader is not None:
            self._on_leader()

    async def _maybe_snapshot(self) -> None:
        """Snapshot once `snapshot_every` entries were applied since the last one AND the log
        written since holds at least half the last snapshot's size, so a large state is
        snapshotted proportionally less often (the rule of Redis's AOF rewrite percentage).

        A state of FORK_ABOVE_BYTES or more is serialised in a forked child (`snapshotter.py`)
        while this task goes on replicating; when its bytes are back (the "snapshot" inbox
        event) they are handed to the core and stored here. A smaller state, or any state
        without fork or with `raft.snapshot_in_child = false`, is serialised on this task,
        which stops the driver for as long as that takes."""
        if self._built is not None:
            index, blob = self._built
            self._built = None
            self._snapshot_child = None
            if blob is not None:
                await self._store_snapshot(index, blob)
            else:
                log.warning("%s: building the snapshot at index %d failed; trying again later",
                            self.id, index)
            return
        if self._snapshot_child is not None:
            return  # one at a time
        applied = self._sm.applied_index
        if applied - self._last_snapshot < self.s.snapshot_every:
            return
        if self._log_bytes_since_snapshot < self._last_snapshot_bytes // 2:
            return
        # The core's applied index includes no-op and membership entries beyond the state
        # machine's; snapshot at the core's applied index so no entry is skipped on restore.
        index = self.core.log.applied
        self._log_bytes_since_snapshot = 0
        nursery = self._nursery
        if (self.s.snapshot_in_child and snapshotter.CAN_FORK and nursery is not None
                and self._sm.core.total_bytes >= FORK_ABOVE_BYTES):
            child = snapshotter.start(self._snapshot_blob)  # the state as of `index`, now
            self._snapshot_child = index
            self.snapshots_forked += 1
            nursery.start_soon(self._collect_snapshot, child, index)
            return
        await self._store_snapshot(index, self._snapshot_blob())

    async def _collect_snapshot(self, child: snapshotter.Child, index: int) -> None:
        blob = await child.result()
        try:
            await self._send.send(("snapshot", (index, blob)))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # stopping: the next start snapshots again

    async def _store_snapshot(self, index: int, blob: bytes) -> None:
        if index <= self.core.snapshot.meta.index or self.core.log.term(index) is None:
            # A newer snapshot (installed from the leader, say) replaced the log meanwhile.
            log.info("%s: snapshot at index %d is already superseded; dropped", self.id, index)
            return
        meta: SnapshotMeta = self.core.snapshot_taken(index, blob)
        await self._storage.save_snapshot(meta, _chunks(blob))
        self._last_snapshot = meta.index
        self._last_snapshot_bytes = len(blob)
        self.snapshots_taken += 1
        log.info("%s: snapshot at index %d (%d bytes)", self.id, meta.index, len(blob))

    async def transfer_before_stop(self, timeout_s: float = 3.0) -> None:
        """SIGTERM on the leader: hand leadership over first, so clients see at most a short
        NOT_LEADER instead of an election timeout."""
        if self.role is not Role.LEADER or len(self.core.conf.voters) < 2:
            return
        try:
            await self.admin("transfer")
        except E.LoomError as e:
            log.warning("%s: leadership transfer before stop failed: %s", self.id, e)
            return
        with trio.move_on_after(timeout_s):
            while self.role is Role.LEADER:
                await self._role_changed.wait()
