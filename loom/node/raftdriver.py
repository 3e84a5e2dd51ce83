"""The Raft driver: the only writer of state, behind the `Replicator` seam.

One task owns the consensus core. Everything reaches it through one bounded inbox (inbox.py:
ticks, peer messages, proposals, reads, admin requests, built snapshots, peers gone) and it
carries out each Ready as the core's contract allows (loom/raft/ready.py, `plan`: the same rule
the simulator runs):

    take a turn of inbox events -> core.step/propose/admin ... ; elapsed ticks; one ReadIndex
    while core.has_ready():
        rd = core.ready(); order = plan(rd, synced)      (the overlaps the contract allows)
        send order.early                                 (a leader's AppendEntries/heartbeats)
        apply rd.committed_entries if order.apply_first  (already durable on a majority)
        write rd.snapshot_chunks                         (a snapshot being received: its file)
        rd.snapshot: the state from its file, installed  (the file renamed into place, synced)
        persist rd.entries, rd.hard_state                (one storage call, fsync if must_sync,
                                                          in a worker thread: group commit)
        send order.late                                  (votes, acks: they depend on the sync)
        apply rd.committed_entries otherwise             (a Ready with a snapshot: strictly)
        answer rd.read_states once applied >= index      (linearizable reads, no log write)
        core.advance(rd)
    maybe snapshot (snapshots.py)

The callers waiting on it are in waiters.py, cluster administration in membership.py.

Invariants:
- A proposal is answered only when the entry at its index is applied here. If the entry applied
  at that index has another term, a different leader's entry won the slot: the write was not
  applied and the caller hears UNAVAILABLE (safe to retry). If the node loses contact instead,
  the caller's deadline expires and the outcome is reported as unknown (TIMEOUT).
- Nothing is acknowledged before it is durable on a majority: a write is answered when its
  entry is committed and applied, and the core counts this node's copy only once the fsync of
  the batch that holds it returned. An fsync failure stops the node (storage raises
  FatalIOError; this task lets it escape and the node exits).
- Reads are linearizable: every pending read of one inbox turn shares one ReadIndex request;
  each is served from the state machine once the applied index reaches the read index. A
  request not answered within election_ticks_min ticks on a follower, or asked in an earlier
  term, is asked again (waiters.py `ask_again`): a lost message costs a read a retry, and
  only its deadline (TIMEOUT) ends it unanswered.
- The state machine sees only committed entries, in order, exactly once per boot; a snapshot
  (the whole state, member addresses included) replaces it wholesale.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import trio

from loom.node.config import RaftSettings, raft_config
from loom.node.heap import release_free_memory
from loom.node.inbox import Admin, Inbox, PeerGone, PeerMessage, Propose, Read, SnapshotBuilt
from loom.node.membership import Membership, parse_admin
from loom.node.replicator import Applied, LogStatistics, OnDone
from loom.node.snapshots import FileSource, SnapshotPolicy, SnapshotReceiver, stored_source
from loom.node.waiters import StructureId, Waiter, Waiters, completion
from loom.raft import messages as m
from loom.raft.confchange import ConfChange, ConfChangeType, bootstrap
from loom.raft.core import RaftCore
from loom.raft.messages import Message
from loom.raft.ready import Busy, NotLeader, Ready, Role, plan
from loom.raft.types import EntryType, SnapshotMeta
from loom.security.peertrust import Vouch
from loom.state.command import Command, Outcome
from loom.state.limits import StateLimits
from loom.state.machine import StateMachine
from loom.state.members import MEMBER_ADDRESS
from loom.storage.aio import AsyncStorage
from loom.storage.errors import DiskFullError, FatalIOError
from loom.storage.storage import Recovered, Storage
from loom.wire import errors as E

log = logging.getLogger("loom.raft")
_FROM_LEADER = (m.AppendEntries, m.Heartbeat, m.InstallSnapshot)


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


class RaftDriver:
    def __init__(
        self, settings: RaftSettings, storage: Storage, recovered: Recovered, *,
        node_id: str, client_addr: str, inbox: int,
        member_addrs: dict[str, str],
        on_applied: Callable[[Applied], None] | None = None,
        on_leader: Callable[[], None] | None = None,
        limits: StateLimits = StateLimits(),  # noqa: B008 - immutable
        joining: bool = False,
        on_joined: Callable[[], None] | None = None,
    ) -> None:
        self.s = settings
        self.id = node_id
        self.client_addr = client_addr
        self.tick_s = settings.tick_ms / 1000
        self._storage = AsyncStorage(
            storage, inline_sync_entries=settings.inline_sync_entries,
            inline_sync_below_s=settings.inline_sync_below_ms / 1000)
        self._on_applied = on_applied
        self._on_leader = on_leader
        # Founders' peer addresses from the configuration; the replicated ones (the state
        # machine's, loom/state/members.py) win over them.
        self._config_addrs = dict(member_addrs)
        self._limits = limits
        snap_src: bytes | FileSource = b""
        # What replaying the WAL read and let go goes back before the state is rebuilt, or
        # the state would grow on top of it (heap.py): measured on a synthetic start, 1M
        # entries, the peak of the restore went from 506 MB to 464 MB (447 MB after it).
        release_free_memory()
        if recovered.snapshot is not None:
            reader = storage.load_snapshot()
            assert reader is not None, "recovered a snapshot that cannot be read"
            size = 0

            def counted() -> Iterator[bytes]:
                nonlocal size
                for chunk in reader.chunks():
                    size += len(chunk)
                    yield chunk

            # decoded as the file is read: the bytes are never whole in memory
            self._sm = StateMachine.restore_from(counted(), limits)
            snap_src = FileSource(reader, size)
        else:
            self._sm = StateMachine(limits)
        rcfg = raft_config(node_id, settings)
        seed = int.from_bytes(os.urandom(8), "big")  # election jitter only; never in apply
        self.core = RaftCore(rcfg, random.Random(seed), recovered.hard_state, recovered.snapshot,
                             recovered.entries, snap_src, joining=joining)
        # started empty (loom.node.bootstrap): told once the core caught up, after the Ready
        # that got it there is persisted
        self._on_joined = on_joined if joining else None
        snap_index = recovered.snapshot.index if recovered.snapshot else 0
        self._synced = recovered.hard_state  # the hard state last made durable
        self._inbox = Inbox(inbox)
        self._waiters = Waiters(settings.proposal_timeout_s, settings.read_timeout_s)
        self.membership = Membership(self.core, node_id, self._waiters, self.not_leader,
                                     configured=member_addrs)
        self.snapshots = SnapshotPolicy(node_id, settings, self.core, self._storage, snap_index)
        self._receiver = SnapshotReceiver(self._storage)
        release_free_memory()  # what recovery read and let go (heap.py)
        self._nursery: trio.Nursery | None = None
        self._read_seq = 0
        self.transport: Any = None  # PeerTransport, set by the node before run()
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.leader_changes = 0
        self.batches = 0
        self.entries_persisted = 0
        self.disk_full = False
        self._next_tick_at = 0.0
        # Every committed entry this node has applied, no-op and membership entries included
        # (the state machine's own index counts only its commands). Reads compare with this.
        self._applied = snap_index

    # -- Replicator interface ------------------------------------------------------------------
    def state(self) -> StateMachine:
        return self._sm

    def submit(self, cmd: Command, *, read: bool, on_done: OnDone,
               stale: bool = False) -> None:
        """Start a write (or a linearizable read) without waiting for it: `on_done` runs once,
        in this trio run, when the entry is applied (the read served), refused, or its deadline
        passes. Raises when it cannot even start (BUSY, UNAVAILABLE, LIMIT_EXCEEDED). A stale
        read is answered at once from this node's replica, whatever its role."""
        waiters = self._waiters
        if read:
            if stale or (self.role is Role.LEADER and self.core.conf.voters == (self.id,)):
                # A cluster of one is its own majority: every acknowledged write is already
                # applied here and no other node can lead, so the state machine answers now.
                on_done(self._sm.read(cmd), None)
                return
            w = waiters.read(cmd, on_done)
            self._inbox.put(Read(w))
            waiters.read_started(w)
            return
        if self.disk_full:
            raise E.LimitExceeded("the node's disk is full; writes are refused until space "
                                  "returns", retry_after_ms=1000)
        w = waiters.write(cmd, on_done, f"the write {cmd.op}")
        self._inbox.put(Propose(w))
        waiters.write_started(w)

    async def propose(self, cmd: Command) -> Outcome:
        return await completion(lambda done: self.submit(cmd, read=False, on_done=done))

    async def read(self, cmd: Command, *, stale: bool = False) -> Outcome:
        return await completion(
            lambda done: self.submit(cmd, read=True, on_done=done, stale=stale))

    def changed_event(self, structure: StructureId) -> trio.Event:
        return self._waiters.changed_event(structure)

    async def admin(self, what: str, **kw: Any) -> Any:
        """Membership changes and leadership transfer (membership.py), run by the driver."""
        req = parse_admin(what, kw)

        def start(on_done: OnDone) -> None:
            w = self._waiters.write(None, on_done, what)
            self._inbox.put(Admin(req, w))
            self._waiters.write_started(w)

        return (await completion(start)).value

    def on_peer_message(self, msg: Message) -> None:
        self._inbox.put_message(msg)

    def is_member(self, node: str) -> bool:
        return self.membership.is_member(node)

    def admits_peer(self, node: str) -> bool:
        """The peer listener's question, for every frame (membership.py, security/peertrust)."""
        return self.membership.admits_peer(node)

    def heard_members(self, peer: str, vouch: Vouch) -> None:
        """An admitted peer's committed configuration (PEER_MEMBERS): it may vouch for members
        we do not know yet; the links follow."""
        if self.membership.hear(peer, vouch):
            self._vouched_changed()

    def _vouched_changed(self) -> None:
        st = self.membership.trust.statistics()
        if st.vouched:
            log.info("%s: admitting %s, members at index %s as %s vouches (our log is at %d)",
                     self.id, ", ".join(st.vouched), st.vouch_index, st.voucher,
                     self.core.log.applied)
        else:
            log.info("%s: no vouched members left (our log is at %d)", self.id,
                     self.core.log.applied)
        if self.transport is not None:
            self.transport.set_peers(self.membership.link_peers(self.member_addr))

    def _follow_membership(self, changed: bool) -> None:
        """After a batch is applied: our configuration (`changed`), or the vouches our log now
        supersedes, move the peer links; a changed configuration is told to every peer."""
        if self.membership.refresh_trust(force=changed):
            self._vouched_changed()
        if changed and self.transport is not None:
            self.transport.set_peers(self.membership.link_peers(self.member_addr))
            self.transport.set_vouch(self.membership.vouch(self.member_addr))

    def member_addr(self, node: str) -> str | None:
        return self._sm.members.addrs.get(node) or self._config_addrs.get(node)

    def leader_addr(self) -> str | None:
        if self.leader is None:
            return None
        return self._client_addr_of(self.leader)

    def _client_addr_of(self, node: str) -> str | None:
        if node == self.id:
            return self.client_addr
        if self.transport is not None:
            addr: str | None = self.transport.client_addr_of(node)
            return addr
        return None

    def not_leader(self) -> E.NotLeader:
        if self.leader is None:
            return E.NotLeader("no leader is known yet (election in progress); retry",
                               leader=None, leader_addr=None)
        return E.NotLeader(f"{self.id} is not the leader; {self.leader} is",
                           leader=self.leader, leader_addr=self.leader_addr())

    def statistics(self) -> LogStatistics:
        snaps = self.snapshots
        return LogStatistics(
            node=self.id, role=self.role.value, term=self.core.term, leader=self.leader,
            commit_index=self.core.log.committed, applied_index=self._sm.applied_index,
            last_index=self.core.log.last_index, snapshot_index=snaps.last_index,
            proposals_pending=len(self._waiters.proposals),
            batches=self.batches, entries_persisted=self.entries_persisted,
            entries_per_batch=round(self.entries_persisted / self.batches, 2)
            if self.batches else 0.0,
            dropped_peer_messages=self._inbox.dropped_messages, snapshots_taken=snaps.taken,
            snapshots_forked=snaps.forked, snapshot_building_at=snaps.building_at,
            transfers_started=self.membership.transfers_started,
            leader_changes=self.leader_changes, read_index_rounds=self.core.read_index_rounds,
            lease_reads=self.core.lease_reads, snapshots_sent=self.core.snapshots_sent,
            removed=self.removed,
        )

    def cluster_status(self) -> dict[str, Any]:
        t = self.transport
        out = self.membership.status(
            self.role, self.leader, self.leader_addr(), self._client_addr_of, self.member_addr,
            lambda n: bool(t.reachable(n)) if t is not None else None)
        if self.removed is not None:
            out["removed"] = self.removed
        return out

    # A removed node never learns of its removal through the log when it missed the commit: its
    # peers refuse it. Once told (by a member it dialled, or by applying a configuration that
    # lists it as removed) it stops ticking, so it never campaigns again; the core is untouched.
    removed: str | None = None

    _removal_told: frozenset[str] = frozenset()
    _removed_conf: Any = None  # the configuration in force when we learned it

    def peer_gone(self, peer: str) -> None:
        """`peer`'s address refused our dial (peerlink.refused): the core decides whether that
        lets it campaign early (RaftCore.peer_gone)."""
        self._inbox.put_gone(peer)

    def told_removed(self, peer: str) -> None:
        """Member `peer` (authenticated, dialled by us) refused us as removed. Believed once a
        majority of the other voters of our own configuration say so: one lagging member that
        has not applied our re-admission yet is not enough. A node that knows no configuration
        of its own (joining) or is not in it has nothing to believe."""
        conf = self.core.conf
        if self.id not in conf.voters and self.id not in conf.learners:
            return
        others = set(conf.voters) - {self.id}
        self._removal_told = self._removal_told | {peer}
        if len(self._removal_told & others) >= len(others) // 2 + 1:
            self.mark_removed(f"removed from the configuration (refused by members "
                              f"{', '.join(sorted(self._removal_told & others))})")

    def _recheck_removed(self) -> None:
        """A later configuration that does not list us as removed (a re-admission applied or
        installed) lifts the mark; so `removed` holds only for the configuration it was
        learned in."""
        conf = self.core.conf
        if conf != self._removed_conf and self.id not in conf.removed:
            log.warning("%s: a member of the configuration again; serving", self.id)
            self.removed, self._removal_told = None, frozenset()

    def mark_removed(self, why: str) -> None:
        self._removed_conf = self.core.conf
        if self.removed is not None:
            return
        self.removed = why
        log.warning("%s: this node was %s; it no longer campaigns or serves. To bring it back, "
                    "run `loomctl members add %s --peer-addr HOST:PORT --readmit` (it comes back "
                    "as a learner) and start it with `loomd --join` on an empty data directory "
                    "(docs/cli.md)", self.id, why, self.id)

    # -- the driver task -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._inbox.accepting = True
            await self._catch_up_alone()
            self._follow_membership(True)  # links and vouch from the recovered configuration
            self._next_tick_at = trio.current_time() + self.tick_s
            nursery.start_soon(self._ticker)
            task_status.started()
            try:
                await self._loop()
            finally:
                self._inbox.close_receiving()
                nursery.cancel_scope.cancel()
                self._waiters.stop()

    def stop(self) -> None:
        self._inbox.close()

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
            self._waiters.expire(trio.current_time())
            if not self._inbox.put_tick():
                return

    def _catch_up_ticks(self, heard_leader: bool = False) -> None:
        """Give the core every tick the monotonic clock says has elapsed, before the turn's
        reads. Time spent paused (SIGSTOP, a stalled VM, a long fsync) therefore counts: a
        leader that was away longer than its lease steps down or stops trusting the lease
        before it could answer a read (ticks are the core's only clock).

        Except on a follower that this very turn heard from its leader (`heard_leader`): the
        ticks of its own stall, which elapsed before it read that message, are not held
        against a leader that is alive, or it would campaign on waking, with its reads
        refused meanwhile. Dropping them only makes it honour the leader longer than the
        clock says, the safe side of every lease; if the leader dies now, the next election
        timeout notices."""
        now = trio.current_time()
        if heard_leader and now >= self._next_tick_at + self.tick_s:
            self._next_tick_at = now  # one tick now, the backlog dropped
        if self.removed is not None:  # removed: time no longer moves for the core
            self._recheck_removed()
        if self.removed is not None:
            self._next_tick_at = now + self.tick_s
            return
        n = 0
        while now >= self._next_tick_at and n < 100_000:
            self.core.tick()
            self._next_tick_at += self.tick_s
            n += 1
        if now >= self._next_tick_at:  # absurdly far behind: resynchronise
            self._next_tick_at = now + self.tick_s

    async def _loop(self) -> None:
        # Order within a turn: what peers and clients sent first (a stall must not make a
        # healthy leader step down, or a follower campaign, before it reads the messages
        # already waiting for it), then the ticks that elapsed, and the reads last, so a read
        # is only ever checked against a lease the ticks have aged.
        core, waiters = self.core, self._waiters
        while (turn := await self._inbox.turn()) is not None:
            heard = False  # from the leader this node follows, this turn
            for evt in turn:
                if isinstance(evt, PeerMessage):
                    core.step(evt.msg)
                    heard = heard or (evt.msg.frm == core.leader
                                      and isinstance(evt.msg, _FROM_LEADER))
                elif isinstance(evt, Propose):
                    self._propose(evt.waiter)
                elif isinstance(evt, Read):
                    waiters.pending_reads.append(evt.waiter)
                elif isinstance(evt, Admin):
                    self.membership.run(evt.request, evt.waiter)
                elif isinstance(evt, SnapshotBuilt):
                    self.snapshots.built(evt.at, evt.blob)
                elif isinstance(evt, PeerGone):
                    core.peer_gone(evt.peer)
                # a Tick only wakes the loop: _catch_up_ticks counts them from the clock
            self._catch_up_ticks(heard and core.role is Role.FOLLOWER)
            self._flush_reads()
            await self._process_ready()
            self.membership.settle_transfers()

    # -- inputs --------------------------------------------------------------------------------
    def _propose(self, w: Waiter) -> None:
        assert w.cmd is not None
        r = self.core.propose(w.cmd.encode())
        if isinstance(r, NotLeader):
            w.fail(self.not_leader())
        elif isinstance(r, Busy):
            w.fail(E.Busy(f"write refused: {r.reason}", retry_after_ms=100))
        else:
            w.term = self.core.term
            self._waiters.proposals[r] = w

    def _flush_reads(self) -> None:
        waiters, core = self._waiters, self.core
        if waiters.asked:  # a request lost on the way, or asked of an earlier leader
            waiters.ask_again(core.term, core.ticks, None if core.role is Role.LEADER
                              else self.s.election_ticks_min)
        if not waiters.pending_reads:
            return
        batch, waiters.pending_reads = waiters.pending_reads, []
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        r = core.read_index(ctx)
        if isinstance(r, NotLeader):
            err = self.not_leader()
            for w in batch:
                w.fail(err)
        elif isinstance(r, Busy):
            for w in batch:
                w.fail(E.Busy(f"read refused: {r.reason}", retry_after_ms=50))
        else:
            waiters.ask(ctx, core.term, core.ticks, batch)

    # -- Ready processing ----------------------------------------------------------------------
    async def _process_ready(self) -> None:
        core, waiters = self.core, self._waiters
        while core.has_ready():
            rd = core.ready()
            if rd is None:
                break
            order = plan(rd, self._synced)  # the contract's overlaps (raft/ready.py)
            if order.early and self.transport is not None:
                self.transport.send(order.early)
            conf_changed = self._apply(rd) if order.apply_first else False
            await self._persist(rd)
            if rd.snapshot is not None:
                self.snapshots.installed(rd.snapshot.index)
                self._applied = max(self._applied, rd.snapshot.index)
            if order.late and self.transport is not None:
                self.transport.send(order.late)
            if not order.apply_first:
                conf_changed = self._apply(rd)
            for rs in rd.read_states:
                waiters.read_state(rs.ctx, rs.index)
            waiters.serve_reads(self._applied, self._sm)
            core.advance(rd)  # the core's configuration is current from here on
            if self._on_joined is not None and not core.joining:
                self._on_joined()  # after _persist: what brought it up to date is durable
                self._on_joined = None
            self._follow_membership(conf_changed or rd.snapshot is not None)
            if rd.soft_state is not None:
                self._on_soft_state(rd)
        await self.snapshots.maybe(self._sm, self._nursery, self._inbox.put_built)

    async def _persist(self, rd: Ready) -> None:
        if rd.snapshot_chunks:
            await self._receiver.write(rd.snapshot_chunks)
        if rd.snapshot is not None:
            await self._install_received(rd.snapshot)
        elif rd.snapshot_chunks:
            await self._receiver.drop_complete()
        if rd.entries or rd.hard_state is not None:
            await self._save_until_space(rd)
            if rd.hard_state is not None and rd.must_sync:
                self._synced = rd.hard_state
            if rd.entries:
                self.batches += 1
                self.entries_persisted += len(rd.entries)

    async def _install_received(self, meta: SnapshotMeta) -> None:
        """A snapshot received whole (snapshots.py `SnapshotReceiver`): its file, synced, is
        read back into the new state, and installed only if that succeeds. The old state goes
        first, so the peak is the larger of the two states, not their sum: nothing else runs
        until the new one is in place (no await in between), and if the bytes do not make a
        state the node stops (the core already moved on) without installing them, and
        starts again from what it had."""
        tmp, size = await self._receiver.finish(meta)
        storage = self._storage.storage
        self._sm = StateMachine(self._limits)
        try:
            self._sm = StateMachine.restore_from(storage.read_snapshot_tmp(tmp).chunks(),
                                                 self._limits)
        except Exception as e:
            await self._storage.discard_snapshot_tmp(tmp)
            raise FatalIOError(f"the snapshot at index {meta.index} from {self.leader} does "
                               f"not make a state ({e}); discarded, stopping") from e
        await self._storage.install_snapshot(meta, tmp)
        self.core.snapshot_stored(meta.index, stored_source(storage, size))

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
                with trio.CancelScope(shield=True):  # on the loop or the thread: aio.py
                    await self._storage.save(rd.hard_state, list(rd.entries), rd.must_sync)
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
        waiters, sm = self._waiters, self._sm
        for e in rd.committed_entries:
            self._applied = max(self._applied, e.index)
            w = waiters.applied(e.index, e.term)
            if e.type is EntryType.CONF_CHANGE:
                self._applied_conf(e.data)
                conf_changed = True
                if w is not None:
                    w.resolve(Outcome.ok({"index": e.index}))
                continue
            if e.type is not EntryType.NORMAL or e.index <= sm.applied_index:
                continue
            self.snapshots.log_bytes_since += len(e.data)
            cmd = Command.decode(e.data)
            outcome = sm.apply(cmd, e.index)
            if cmd.op == MEMBER_ADDRESS:
                conf_changed = True  # links follow the addresses too
            elif not outcome.wait:
                waiters.wake(sm.changed_structures)
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

    def _on_soft_state(self, rd: Ready) -> None:
        ss = rd.soft_state
        assert ss is not None
        was_leader = self.role is Role.LEADER
        if ss.leader != self.leader:
            self.leader_changes += 1
        self.role, self.leader = ss.role, ss.leader
        log.info("%s: %s (leader %s, term %d)", self.id, ss.role.value, ss.leader,
                 self.core.term)
        if was_leader and ss.role is not Role.LEADER:
            self._waiters.leadership_lost(self.not_leader())
        if ss.role is Role.LEADER and not was_leader and self._on_leader is not None:
            self._on_leader()

    async def transfer_before_stop(self, timeout_s: float = 3.0) -> None:
        """SIGTERM on the leader: hand leadership over first, so clients see at most a short
        NOT_LEADER instead of an election timeout."""
        if self.role is not Role.LEADER or len(self.core.conf.voters) < 2:
            return
        # Answered once the target leads (membership.py); a window that closed first (BUSY)
        # is tried again, to the most caught-up voter of the moment, within `timeout_s`.
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    await self.admin("transfer")
                    return
                except E.Busy:
                    await trio.sleep(self.tick_s)
                except E.NotLeader:
                    return  # someone else leads already
                except E.LoomError as e:
                    log.warning("%s: leadership transfer before stop failed: %s", self.id, e)
                    return
        log.warning("%s: no other voter took office within %g s; stopping as leader",
                    self.id, timeout_s)
