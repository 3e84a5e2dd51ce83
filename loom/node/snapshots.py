"""When the driver snapshots its state, and where the bytes are made.

Policy: snapshot once `snapshot_every` commands were applied since the last snapshot AND the log
written since holds at least half the last snapshot's size, so a large state is snapshotted
proportionally less often (the rule of Redis's AOF rewrite percentage).

A state of FORK_ABOVE_BYTES or more is snapshotted by a forked child (`snapshotter.py`) while
the driver goes on replicating: the child encodes its image of the state a batch at a time
(`StateMachine.snapshot_chunks`) straight into a fsynced temp file (`Storage.write_snapshot_tmp`)
and reports only the file's name and size. When that report is back (a `SnapshotBuilt` inbox
event) the driver installs the file (renamed into place, WAL mark, then log compaction:
durable before anything is truncated) and hands it to the core. A smaller state, or any state
without fork or with `raft.snapshot_in_child = false` (or on a file system held in memory, in
tests), is serialised on the driver task, which
stops the driver for as long as that takes. One snapshot at a time.

Memory: the parent never holds a large snapshot's bytes; the child holds one batch of encoded
entries (plus the pages copy-on-write makes it copy). A small snapshot's bytes live only while
they are made and stored. A snapshot received from a leader is never whole in memory: its
chunks go to a file as they arrive and the state is rebuilt from that file
(`SnapshotReceiver`). The core keeps the meta and a `FileSource` over the stored file, which a
lagging follower's stream reads chunk by chunk (one storage chunk, SNAPSHOT_CHUNK bytes, in
memory at a time).

The snapshot is taken at the core's applied index (which counts no-op and membership entries
beyond the state machine's own), so no entry is skipped on restore.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio

from loom.node import snapshotter
from loom.node.config import RaftSettings
from loom.node.heap import release_free_memory
from loom.raft.core import RaftCore
from loom.raft.ready import SnapshotChunk
from loom.raft.types import SnapshotMeta
from loom.state.machine import StateMachine
from loom.storage.aio import AsyncStorage
from loom.storage.snapshot import SnapshotReader, SnapshotWriter
from loom.storage.storage import Storage

log = logging.getLogger("loom.raft")

SNAPSHOT_CHUNK = 1 << 20
# Below this estimated state size a snapshot is serialised on the driver task: it takes tens of
# milliseconds (far inside an election timeout), less than forking, copy-on-write faults and
# the pipe would cost. Above it, in a forked child (snapshotter.py).
FORK_ABOVE_BYTES = 16 << 20


def chunks(data: bytes) -> Iterator[bytes]:
    """A snapshot as storage takes it: chunks of SNAPSHOT_CHUNK bytes (one empty one if none),
    each copied only when storage asks for it, so a snapshot is never held twice."""
    if not data:
        yield b""
    for i in range(0, len(data), SNAPSHOT_CHUNK):
        yield data[i:i + SNAPSHOT_CHUNK]


class FileSource:
    """A stored snapshot's bytes, read from its file when a follower needs them (the core's
    `SnapshotSource`). Reads go forward through the file's chunks; a read before the current
    chunk (a retransmission after a follower restarted its stream) starts over from the top.
    The file stays as long as the core uses it: storage keeps `snapshots_to_retain` >= 1
    files, and the core moves to the next snapshot's source as soon as that one is stored."""

    def __init__(self, reader: SnapshotReader, size: int) -> None:
        self._reader = reader
        self._size = size
        self._chunks: Iterator[bytes] | None = None
        self._at = 0  # offset of `_buf` in the snapshot
        self._buf = b""

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, n: int) -> bytes:
        if self._chunks is None or offset < self._at:
            self._chunks, self._at, self._buf = self._reader.chunks(), 0, b""
        out = bytearray()
        while len(out) < n:
            if offset >= self._at + len(self._buf):
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._at, self._buf = self._at + len(self._buf), nxt
                continue
            lo = offset - self._at
            piece = self._buf[lo : lo + n - len(out)]
            out += piece
            offset += len(piece)
        return bytes(out)


def stored_source(storage: Storage, size: int) -> FileSource:
    """The source of the snapshot storage has just stored (or recovered)."""
    reader = storage.load_snapshot()
    assert reader is not None, "a stored snapshot that cannot be read"
    return FileSource(reader, size)


class SnapshotReceiver:
    """The receiving end of InstallSnapshot. The core hands the driver each chunk it accepts
    (Ready.snapshot_chunks: in order, contiguous, once each); they go straight to a temp file
    in the snapshot directory (`Storage.snapshot_writer`: checksummed records, encrypted at
    rest like any snapshot), so a follower never holds a received snapshot in memory. A chunk
    at offset 0 starts a new file and removes the one before: the core starts a transfer
    over when the leader, its term, the snapshot index or the size change. A transfer given
    up otherwise (the leader caught the follower up by appends, say) leaves its file until
    the next transfer or the next start, which removes every temp file.

    `finish` ends the file (end record, fsync); the driver reads it back to rebuild the
    state (every record and the end record checked) and only then installs it (rename,
    directory fsync, WAL mark, compaction): a transfer that was cut short, or whose bytes do
    not make a state, is never installed. The core's `max_snapshot_bytes` bounds the file."""

    TAG = ".rx"

    def __init__(self, storage: AsyncStorage) -> None:
        self._storage = storage
        self._writer: SnapshotWriter | None = None
        self._total = 0  # the size the transfer being written announced

    async def write(self, chunks: Sequence[SnapshotChunk]) -> None:
        """Append the chunks; a whole transfer that the same Ready does not install (the
        core already held what it covers) is removed again: `drop_complete`."""
        await self._storage.call(self._write, chunks)

    def _write(self, chunks: Sequence[SnapshotChunk]) -> None:
        for c in chunks:
            w = self._writer
            if c.offset == 0:
                self._discard()
                w = self._writer = self._storage.storage.snapshot_writer(c.meta, self.TAG)
                self._total = c.total
            elif w is None or w.meta != c.meta or w.size != c.offset:
                # the core hands over each transfer in order: anything else is a bug here
                raise AssertionError(f"snapshot chunk at {c.offset} does not continue the "
                                     f"file ({w.size if w else None} bytes)")
            w.write(c.data)

    async def drop_complete(self) -> None:
        """After a Ready without a snapshot to install: a transfer received whole was not
        needed (the follower's log already held its index and term), so its file goes."""
        w = self._writer
        if w is not None and w.size == self._total:
            await self._storage.call(self._discard)

    async def finish(self, meta: SnapshotMeta) -> tuple[str, int]:
        """The received file, complete and synced: (temp path, bytes)."""
        w = self._writer
        if w is None or w.meta != meta:
            raise AssertionError(f"snapshot {meta.index} was not received")
        self._writer = None
        return await self._storage.call(w.finish)

    def _discard(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None


class SnapshotPolicy:
    def __init__(self, node_id: str, settings: RaftSettings, core: RaftCore,
                 storage: AsyncStorage, last_index: int) -> None:
        self.id = node_id
        self.s = settings
        self.core = core
        self._storage = storage
        self.last_index = last_index  # index of the newest snapshot stored or installed
        self._last_bytes = 0  # size of the last snapshot taken here (0: none yet)
        self.log_bytes_since = 0  # command bytes applied since the last snapshot
        self.building_at: int | None = None  # index being written by a child process
        self._building: SnapshotMeta | None = None  # ... and its meta
        self._built: tuple[int, bytes | None] | None = None  # its report, back in the inbox
        self.taken = 0
        self.forked = 0  # of which serialised in a child
        self._trim_due = False  # much was freed (a state replaced): give the pages back

    def installed(self, index: int) -> None:
        """A snapshot from the leader replaced the state."""
        self.last_index = index
        self._trim_due = True

    def built(self, index: int, report: bytes | None) -> None:
        """The child's report arrived (installed by the next `maybe`, at the end of the turn)."""
        self._built = (index, report)

    async def maybe(self, sm: StateMachine, nursery: trio.Nursery | None,
                    post: Callable[[int, bytes | None], Awaitable[None]]) -> None:
        """Store a built snapshot, or start one if the policy says so. `post` hands a forked
        child's result back to the driver's inbox."""
        if self._trim_due:
            await self._release()
        if self._built is not None:
            index, report = self._built
            meta = self._building
            self._built, self._building, self.building_at = None, None, None
            if report is not None and meta is not None:
                tmp, size = json.loads(report)
                await self._install(meta, tmp, size)
            else:
                log.warning("%s: building the snapshot at index %d failed; trying again later",
                            self.id, index)
            return
        if self.building_at is not None:
            return  # one at a time
        if sm.applied_index - self.last_index < self.s.snapshot_every:
            return
        if self.log_bytes_since < self._last_bytes // 2:
            return
        index = self.core.log.applied
        self.log_bytes_since = 0
        storage = self._storage.storage
        if (self.s.snapshot_in_child and snapshotter.CAN_FORK and nursery is not None
                and storage.child_can_write_snapshots
                and sm.core.total_bytes >= FORK_ABOVE_BYTES):
            meta = self.core.snapshot_meta_at(index)

            def write() -> bytes:  # in the child: the state as of `index`, forked now
                tmp, size = storage.write_snapshot_tmp(meta, sm.snapshot_chunks(), tag=".fork")
                return json.dumps([tmp, size]).encode()

            child = snapshotter.start(write)
            self.building_at, self._building = index, meta
            self.forked += 1
            nursery.start_soon(self._collect, child, index, post)
            return
        await self._store(index, sm.snapshot())

    @staticmethod
    async def _collect(child: snapshotter.Child, index: int,
                       post: Callable[[int, bytes | None], Awaitable[None]]) -> None:
        await post(index, await child.result())

    def _superseded(self, index: int) -> bool:
        if index <= self.core.snapshot_meta.index or self.core.log.term(index) is None:
            # A newer snapshot (installed from the leader, say) replaced the log meanwhile.
            log.info("%s: snapshot at index %d is already superseded; dropped", self.id, index)
            return True
        return False

    async def _install(self, meta: SnapshotMeta, tmp: str, size: int) -> None:
        """A child's written file: into place, then the core reads it from there."""
        if self._superseded(meta.index):
            await self._storage.discard_snapshot_tmp(tmp)
            return
        await self._storage.install_snapshot(meta, tmp)
        self._stored(meta, size)
        await self._release()

    async def _store(self, index: int, blob: bytes) -> None:
        if self._superseded(index):
            return
        # Stored first, then handed to the core as a file: the blob goes when this returns.
        # Nothing else steps the core while this awaits (the driver task is here).
        meta: SnapshotMeta = self.core.snapshot_meta_at(index)
        await self._storage.save_snapshot(meta, chunks(blob))
        self._stored(meta, len(blob))
        del blob
        await self._release()

    async def _release(self) -> None:
        """The log behind a snapshot, or a replaced state, was just freed: hand the pages
        back (`heap.py`). In a thread: it takes about 0.1 s per 250 MB freed, and the C call
        does not hold the GIL."""
        self._trim_due = False
        await trio.to_thread.run_sync(release_free_memory)
    def _stored(self, meta: SnapshotMeta, size: int) -> None:
        self.core.snapshot_taken(meta.index, stored_source(self._storage.storage, size))
        self.last_index = meta.index
        self._last_bytes = size
        self.taken += 1
        log.info("%s: snapshot at index %d (%d bytes)", self.id, meta.index, size)
