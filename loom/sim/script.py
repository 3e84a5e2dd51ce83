"""A tiny interaction-script interpreter for data-driven Raft tests (etcd testdata style).

Each command drives in-memory cores by hand and prints what happened; the test compares the
output to the expected text checked in next to the script. Every Ready is carried out as
`loom.raft.ready.plan` allows, and printed in the order it happens: a role change, how many
messages left before the write, the write itself (snapshot, hard state, entries, must_sync),
the applied entries and the reads made ready. Messages are printed when delivered. Commands:

  limit max-entries-per-append N   for the cores started from here on
  add-nodes N                  founders n1..nN (bootstrap log), seed 0 randomness
  tick NODE [K]                K ticks on NODE
  campaign NODE                tick NODE until it starts an election
  propose NODE DATA            propose bytes DATA (prints the index or the refusal)
  read-index NODE CTX          request a linearizable read
  transfer NODE TO             leadership transfer
  compact NODE INDEX           snapshot at INDEX (must be applied) and compact
  conf NODE add-learner|add-voter|remove ID
  add-node ID                  start an empty node, joining (to be added as a learner)
  partition A,B / C,D          cut every link between the two groups
  heal                         restore all links
  gone NODE PEER               NODE's dial to PEER was refused (RaftCore.peer_gone)
  crash NODE                   drop NODE's unsynced state and in-flight messages, restart it
  wipe NODE                    NODE loses its whole disk and in-flight messages, restarts empty
                               and joining (RaftCore.joining)
  deliver [FROM]               deliver every queued message once (one round), print them;
                               with FROM, only what FROM sent (the rest stays queued)
  stabilize                    deliver rounds until no message is left (bounded)
  status                       one line per node: role, term, leader, commit, applied, last
"""

from __future__ import annotations

import random

from loom.raft import messages as m
from loom.raft.confchange import ConfChange, ConfChangeType, bootstrap
from loom.raft.config import RaftConfig
from loom.raft.core import RaftCore
from loom.raft.ready import BytesSink, BytesSource, Ready, Role, plan
from loom.raft.types import HardState, SnapshotMeta
from loom.sim.disk import SimDisk, Snapshot
from loom.sim.mutants import core_class

MAX_ROUNDS = 100


class Script:
    def __init__(self, mutant: str | None = None) -> None:
        self.core_class = core_class(mutant)  # a planted bug (loom.sim.mutants) in every core
        self.max_entries = 4
        self.cores: dict[str, RaftCore] = {}
        self.disks: dict[str, SimDisk] = {}
        self.synced: dict[str, HardState] = {}  # per node: the hard state last synced
        self.rx: dict[str, BytesSink] = {}  # per node: a snapshot being received
        self.joining: set[str] = set()  # started empty; durable until the core caught up
        self.queue: list[m.Message] = []
        self.blocked: set[tuple[str, str]] = set()
        self.out: list[str] = []
        self.reads: list[str] = []
        self.rng = random.Random(0)

    def _cfg(self, nid: str) -> RaftConfig:
        return RaftConfig(node_id=nid, max_entries_per_append=self.max_entries,
                          trailing_entries=0, snapshot_chunk_bytes=8, snapshot_window=2)

    def _start(self, nid: str) -> None:
        rec = self.disks[nid].load()
        self.synced[nid] = rec.hard_state
        self.rx[nid] = BytesSink()
        self.cores[nid] = self.core_class(self._cfg(nid),
                                          random.Random(self.rng.getrandbits(32)),
                                          rec.hard_state, rec.snapshot.meta, rec.entries,
                                          rec.snapshot.data, joining=nid in self.joining)
        self._drain(nid)

    def _drain(self, nid: str) -> None:
        """Carry out each Ready as `ready.plan` allows (the order loomd's driver runs) and
        print it as it happens: messages sent before the write, what is written and whether
        it is synced (as etcd's testdata print HardState and MustSync), then what is
        installed, applied and read."""
        core = self.cores[nid]
        while (rd := core.ready()) is not None:
            order = plan(rd, self.synced[nid])
            if rd.soft_state is not None:
                self.out.append(f"{nid} becomes {rd.soft_state.role.value} "
                                f"(term {core.term}, leader {rd.soft_state.leader})")
            writes = rd.hard_state is not None or rd.entries or rd.snapshot is not None
            self.queue.extend(order.early)
            if order.early and writes:
                self.out.append(f"{nid} sends {len(order.early)} before persisting")
            if order.apply_first:
                self._apply(nid, rd, None)
            for chunk in rd.snapshot_chunks:
                self.rx[nid].write(chunk)
            snap = None
            if rd.snapshot is not None:
                snap = Snapshot(rd.snapshot, self.rx[nid].take(rd.snapshot))
                core.snapshot_stored(rd.snapshot.index, BytesSource(snap.data))
            if writes:
                self._persist(nid, rd, snap)
            self.queue.extend(order.late)
            if not order.apply_first:
                self._apply(nid, rd, snap)
            for rs in rd.read_states:
                self.out.append(f"{nid} read {rs.ctx!r} ready at index {rs.index}")
            core.advance(rd)

    def _persist(self, nid: str, rd: Ready, snap: Snapshot | None) -> None:
        disk = self.disks[nid]
        disk.save(rd.hard_state, rd.entries, snap)
        if rd.must_sync:
            disk.sync()
            if rd.hard_state is not None:
                self.synced[nid] = rd.hard_state
        what = []
        if rd.snapshot is not None:
            what.append(f"snapshot {rd.snapshot.index}/{rd.snapshot.term}")
        if (hs := rd.hard_state) is not None:
            what.append(f"hard state term={hs.term} vote={hs.vote} commit={hs.commit}")
        if rd.entries:
            what.append("entries " + " ".join(f"{e.index}/{e.term}" for e in rd.entries))
        self.out.append(f"{nid} persists {', '.join(what)}; must_sync={rd.must_sync}")

    def _apply(self, nid: str, rd: Ready, snap: Snapshot | None) -> None:
        if snap is not None:
            meta = snap.meta
            self.out.append(f"{nid} installs snapshot {meta.index}/{meta.term} "
                            f"({len(snap.data)} bytes, voters "
                            f"{','.join(meta.conf.voters)})")
        for e in rd.committed_entries:
            self.out.append(f"{nid} applies {e.index}/{e.term} {e.type.name} {e.data!r}")

    def run(self, text: str) -> str:
        """Run a script; returns the transcript (commands prefixed with '> ')."""
        lines: list[str] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            self.out = []
            self._command(line.split())
            lines.append(f"> {line}")
            lines.extend(self.out or ["ok"])
        return "\n".join(lines) + "\n"

    def _command(self, args: list[str]) -> None:
        cmd, rest = args[0], args[1:]
        if cmd == "limit" and rest[0] == "max-entries-per-append":
            self.max_entries = int(rest[1])
        elif cmd == "add-nodes":
            voters = tuple(f"n{i}" for i in range(1, int(rest[0]) + 1))
            hs, ents = bootstrap(voters)
            for v in voters:
                self.disks[v] = SimDisk(Snapshot(SnapshotMeta(), b""))
                self.disks[v].save(hs, ents, None)
                self.disks[v].sync()
                self._start(v)
        elif cmd == "add-node":
            self.disks[rest[0]] = SimDisk(Snapshot(SnapshotMeta(), b""))
            self.joining.add(rest[0])
            self._start(rest[0])
        elif cmd == "tick":
            for _ in range(int(rest[1]) if len(rest) > 1 else 1):
                self.cores[rest[0]].tick()
                self._drain(rest[0])
        elif cmd == "campaign":
            core = self.cores[rest[0]]
            for _ in range(core.cfg.election_tick_max * 2):
                if core.role is not Role.FOLLOWER:
                    break
                core.tick()
                self._drain(rest[0])
        elif cmd == "propose":
            self.out.append(f"{self.cores[rest[0]].propose(rest[1].encode())}")
            self._drain(rest[0])
        elif cmd == "read-index":
            self.out.append(f"{self.cores[rest[0]].read_index(rest[1].encode())}")
            self._drain(rest[0])
        elif cmd == "transfer":
            self.out.append(f"{self.cores[rest[0]].transfer_leadership(rest[1])}")
            self._drain(rest[0])
        elif cmd == "compact":
            core = self.cores[rest[0]]
            meta = core.snapshot_taken(int(rest[1]), f"state@{rest[1]}".encode())
            self.disks[rest[0]].save_snapshot(Snapshot(meta, f"state@{rest[1]}".encode()))
            self.out.append(f"snapshot {meta.index}/{meta.term}, log from {core.log.first_index}")
        elif cmd == "conf":
            kind = {"add-learner": ConfChangeType.ADD_LEARNER,
                    "add-voter": ConfChangeType.ADD_VOTER,
                    "remove": ConfChangeType.REMOVE,
                    "readmit": ConfChangeType.READMIT}[rest[1]]
            self.out.append(f"{self.cores[rest[0]].propose_conf_change(ConfChange(kind, rest[2]))}")
            self._drain(rest[0])
        elif cmd == "partition":
            sep = rest.index("/")
            left, right = ",".join(rest[:sep]).split(","), ",".join(rest[sep + 1 :]).split(",")
            for a in filter(None, left):
                for b in filter(None, right):
                    self.blocked |= {(a, b), (b, a)}
        elif cmd == "heal":
            self.blocked.clear()
        elif cmd == "gone":
            core = self.cores[rest[0]]
            core.peer_gone(rest[1])
            self.out.append(f"{rest[0]}: {core.role.value} term={core.term} leader={core.leader}")
            self._drain(rest[0])
        elif cmd in ("crash", "wipe"):
            if not self.cores[rest[0]].joining:
                self.joining.discard(rest[0])
            if cmd == "crash":
                self.disks[rest[0]].crash(random.Random(0), tear=False)
            else:
                self.disks[rest[0]] = SimDisk(Snapshot(SnapshotMeta(), b""))
                self.joining.add(rest[0])
            self.queue = [q for q in self.queue if rest[0] not in (q.to, q.frm)]
            self._start(rest[0])
        elif cmd == "deliver":
            self._round(verbose=True, only_from=rest[0] if rest else None)
        elif cmd == "stabilize":
            for _ in range(MAX_ROUNDS):
                if not self._round(verbose=False):
                    break
        elif cmd == "status":
            for nid in sorted(self.cores):
                c = self.cores[nid]
                self.out.append(
                    f"{nid}: {c.role.value} term={c.term} leader={c.leader} "
                    f"commit={c.log.committed} applied={c.log.applied} last={c.log.last_index} "
                    f"voters={','.join(c.conf.voters)} learners={','.join(c.conf.learners)}"
                    + (" joining" if c.joining else "")
                )
        else:
            raise ValueError(f"unknown command {cmd!r}")

    def _round(self, verbose: bool, only_from: str | None = None) -> bool:
        batch, self.queue = self.queue, []
        if only_from is not None:
            self.queue = [q for q in batch if q.frm != only_from]  # stay queued, in order
            batch = [q for q in batch if q.frm == only_from]
        for msg in batch:
            dropped = (msg.frm, msg.to) in self.blocked or msg.to not in self.cores
            if verbose:
                self.out.append(("dropped " if dropped else "") + _fmt(msg))
            if not dropped:
                self.cores[msg.to].step(msg)
                self._drain(msg.to)
        return bool(batch)


def _fmt(msg: m.Message) -> str:
    d = msg.to_wire()
    kind = str(d.pop("kind")).removeprefix("RAFT_")
    head = f"{d.pop('frm')}->{d.pop('to')} {kind} term={d.pop('term')}"
    return " ".join([head, *(f"{k}={v}" for k, v in d.items())])
