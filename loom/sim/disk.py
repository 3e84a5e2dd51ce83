"""A simulated disk behind a small `Persistence` interface.

The shape is what a real write-ahead log offers the Raft driver: `save()` appends records
(snapshot, entries, hard state: in that order, as the Ready contract requires), `sync()`
makes everything saved so far durable, `save_snapshot()` stores an application snapshot
durably, `load()` returns what a restarted node recovers. `loom.sim.waldisk.WalDisk`
implements it over the real `loom.storage.Storage` on a fault-injecting file system.

`crash()` models power loss: synced records survive; of the unsynced ones a random prefix
survives (the OS may have flushed some), and the last surviving entries record may be torn
(only some of its entries reach the platter; a checksummed WAL drops the torn tail).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from loom.raft.types import Entry, HardState, SnapshotMeta


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot with its bytes, as the simulated disks store it."""

    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class Recovered:
    hard_state: HardState
    snapshot: Snapshot
    entries: tuple[Entry, ...]


class Persistence(Protocol):
    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None) -> None: ...
    def sync(self) -> None: ...
    def save_snapshot(self, snapshot: Snapshot) -> None: ...
    def load(self) -> Recovered: ...


_Record = HardState | Snapshot | tuple[Entry, ...]


class SimDisk:
    def __init__(self, initial: Snapshot | None = None) -> None:
        self.hard_state = HardState()
        self.snapshot = initial or Snapshot(SnapshotMeta(), b"")
        self.entries: list[Entry] = []  # durable entries after snapshot.meta.index
        self.pending: list[_Record] = []
        self.syncs = 0

    def _apply(self, rec: _Record) -> None:
        if isinstance(rec, HardState):
            self.hard_state = rec
        elif isinstance(rec, Snapshot):
            self._set_snapshot(rec, reset=True)
        elif rec:
            first = rec[0].index
            base = self.snapshot.meta.index
            if first <= base:
                rec = tuple(e for e in rec if e.index > base)
                if not rec:
                    return
                first = rec[0].index
            if first > base + len(self.entries) + 1:
                raise AssertionError("WAL gap: records applied out of order")
            del self.entries[first - base - 1 :]
            self.entries.extend(rec)

    def _set_snapshot(self, snap: Snapshot, reset: bool) -> None:
        if snap.meta.index <= self.snapshot.meta.index:
            return
        keep = [] if reset else [e for e in self.entries if e.index > snap.meta.index]
        self.snapshot, self.entries = snap, keep

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None) -> None:
        if snapshot is not None:
            self.pending.append(snapshot)
        if entries:
            self.pending.append(tuple(entries))
        if hard_state is not None:
            self.pending.append(hard_state)

    def sync(self) -> None:
        self.syncs += 1
        for rec in self.pending:
            self._apply(rec)
        self.pending.clear()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.sync()
        self._set_snapshot(snapshot, reset=False)

    def crash(self, rng: random.Random, tear: bool) -> None:
        keep = rng.randint(0, len(self.pending))
        for rec in self.pending[:keep]:
            self._apply(rec)
        if tear and keep < len(self.pending):
            rec = self.pending[keep]
            if isinstance(rec, tuple) and len(rec) > 1:
                self._apply(rec[: rng.randint(1, len(rec) - 1)])
        self.pending.clear()

    def load(self) -> Recovered:
        if self.pending:
            raise AssertionError("load() with unsynced records: crash() first")
        return Recovered(self.hard_state, self.snapshot, tuple(self.entries))


def durable_tail(disk: SimDisk) -> tuple[int, int, int, dict[int, int]]:
    """(offset, last index, last term, {index: term}) of what survives a crash of `disk`."""
    snap = disk.snapshot.meta
    terms = {e.index: e.term for e in disk.entries}
    if disk.entries:
        return snap.index, disk.entries[-1].index, disk.entries[-1].term, terms
    return snap.index, snap.index, snap.term, terms
