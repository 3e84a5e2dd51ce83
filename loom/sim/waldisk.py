"""`WalDisk`: the simulator's `Persistence` over the real `loom.storage.Storage` on `FaultFS`.

Each simulated node gets its own in-memory `FaultFS` (seeded from the simulation) and persists
through the real write-ahead log, hard-state file and snapshot files, so the simulator checks
the Raft core and the storage code together:

* `crash()` is a power cut: `FaultFS.crash()` drops every byte not yet synced, keeps a random
  prefix of each file's unsynced writes and may tear the next one at sector granularity; the
  directory entries of unsynced creates and renames may vanish. The node then recovers through
  `Storage.open` (which cuts a torn tail and cross-checks the snapshot, the WAL and the hard
  state); what it recovers is also the node's durable view while it is down.
* An fsync may fail (`sync_fail_rate`): `Storage` raises `FatalIOError` and refuses every
  further call; the driver fail-stops the node. After a failed fsync the page cache of the file
  can no longer be trusted (Linux may have dropped the dirty pages), so the node comes back
  after a power cycle of its disk, i.e. the same path as a crash.
* An fsync may be slow (`slow_sync_rate`): the driver learns the extra latency through
  `take_delay()` and holds back the messages of that Ready by as much (virtual time).

All randomness comes from the seed handed in, so a simulated run reproduces exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from loom.raft.types import Entry, HardState, SnapshotMeta
from loom.sim.disk import Recovered, Snapshot
from loom.storage.errors import FatalIOError
from loom.storage.faultfs import FaultFS
from loom.storage.storage import Storage, StorageOptions

KiB = 1 << 10
DATA_DIR = "/node"
MAX_OPEN_ATTEMPTS = 8  # a recovery whose own fsync fails is retried after another power cycle


class WalDisk:
    def __init__(
        self,
        seed: int,
        initial_data: bytes = b"",
        *,
        trailing_entries: int = 0,
        sync_fail_rate: float = 0.0,
        slow_sync_rate: float = 0.0,
        slow_sync_max: float = 2.0,
    ) -> None:
        self.fs = FaultFS(seed)
        self._rng = random.Random(seed ^ 0x5EED)
        self._initial = initial_data
        self._sync_fail_rate = sync_fail_rate
        self._slow_rate = slow_sync_rate
        self._slow_max = slow_sync_max
        self._delay = 0.0
        self.syncs = 0
        self.fail_stops = 0
        self.recoveries = 0
        self.torn_bytes = 0
        self.fs.sync_hook = self._on_sync
        self.options = StorageOptions(
            segment_size=64 * KiB,
            max_record_size=16 * KiB,
            snapshot_chunk_size=4 * KiB,
            trailing_entries=trailing_entries,
            fs=self.fs,
        )
        self._storage: Storage | None = None
        self._written = False  # saved to since the last open
        self._recovered = Recovered(HardState(), Snapshot(SnapshotMeta(), initial_data), ())
        self._open()

    # ----- fault plumbing ---------------------------------------------------------------
    def _on_sync(self, path: str) -> None:
        if self._slow_rate and self._rng.random() < self._slow_rate:
            self._delay += self._rng.uniform(0.1, self._slow_max)

    def take_delay(self) -> float:
        """Virtual time the syncs since the last call took beyond the normal."""
        delay, self._delay = self._delay, 0.0
        return delay

    def _open(self) -> None:
        rate = self.fs.sync_fail_rate
        try:
            for attempt in range(MAX_OPEN_ATTEMPTS):
                if attempt == MAX_OPEN_ATTEMPTS - 1:
                    self.fs.sync_fail_rate = 0.0  # bounded: the last attempt cannot fail
                try:
                    storage, rec = Storage.open(DATA_DIR, self.options)
                except (FatalIOError, OSError):  # a start that fails on I/O: power cycle, retry
                    self.fs.crash()
                    continue
                self._storage, self._written = storage, False
                self.recoveries += 1
                self.torn_bytes += rec.torn_bytes
                data = self._initial
                if rec.snapshot is not None:
                    reader = storage.load_snapshot()
                    assert reader is not None
                    data = b"".join(reader.chunks())
                meta = rec.snapshot or SnapshotMeta()
                self._recovered = Recovered(rec.hard_state, Snapshot(meta, data),
                                            tuple(rec.entries))
                return
        finally:
            self.fs.sync_fail_rate = rate

    @property
    def storage(self) -> Storage:
        assert self._storage is not None, "disk is down"
        return self._storage

    # ----- Persistence ------------------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: Snapshot | None) -> None:
        """May raise FatalIOError (a failed fsync): the node must stop."""
        self._written = True
        if snapshot is not None:
            self.storage.save_snapshot(snapshot.meta, [snapshot.data])
        if hard_state is not None or entries:
            self.storage.save(hard_state, entries, must_sync=False)

    def sync(self) -> None:
        self.syncs += 1
        self._written = True
        self.storage.save(None, (), must_sync=True)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._written = True
        self.storage.save_snapshot(snapshot.meta, [snapshot.data])

    def crash(self, rng: random.Random | None = None, tear: bool = True) -> None:
        """Power cut, then recovery through `Storage.open`. A power cut may tear whatever
        write is in flight, so `tear` only matters as False (for tests); `rng` is unused: the
        file system has its own seeded generator."""
        self._storage = None  # its handles are dead after the crash; never closed (no sync)
        self.fs.tear = tear
        self.fs.crash()
        self.fs.tear = True
        self._open()

    def fail_stop(self) -> None:
        self.fail_stops += 1
        self.crash()

    def load(self) -> Recovered:
        """What the node recovers: on a disk written since it was last opened (a node's
        first start), a clean close and `Storage.open` first."""
        if self._written:
            self.storage.close()
            self._storage = None
            self._open()
        self.fs.sync_fail_rate = self._sync_fail_rate  # none before the first start
        return self._recovered

    def durable_tail(self) -> tuple[int, int, int, dict[int, int]]:
        """(offset, last index, last term, {index: term}) of what the node recovered last;
        meaningful while the node is down (it recovered at the crash)."""
        rec = self._recovered
        snap = rec.snapshot.meta
        terms = {e.index: e.term for e in rec.entries}
        if rec.entries:
            return snap.index, rec.entries[-1].index, rec.entries[-1].term, terms
        return snap.index, snap.index, snap.term, terms
