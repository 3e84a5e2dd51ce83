"""SNAPSHOT_SAVE: a consistent snapshot of the whole state, taken by the leader, fetched in chunks.

The first request (no `snapshot` id) makes the leader
1. confirm it still leads and catch its state machine up to a ReadIndex (a linearizable read),
   so everything acknowledged before the request is in the snapshot;
2. take the state machine's snapshot at that instant, in a forked child when the platform can
   fork (`snapshotter.py`: the driver keeps replicating meanwhile), else on the event loop;
3. write it as a snapshot file (`storage/snapshot.py`: records with chained CRC32C, an end
   record with the count, size and CRC of the data, AES-256-GCM with the cluster's keyring when
   the node encrypts at rest) to `<data_dir>/backup/`, off the event loop, and hash it (SHA-256).
The answer names the file (`snapshot`, a random id), its `index`, `term`, `size`, `sha256`,
whether it is `encrypted`, and carries the first chunk; later requests name the id and an
`offset` and get the next chunk. The caller writes the chunks in order and checks the hash.

Bounds: one backup file per node at a time (a new save replaces it; a save while one is being
built is BUSY); a file is deleted once its last chunk was served, or when no chunk was asked for
`idle_s` (checked on every request); chunks are `chunk_bytes` (below the client frame limit).
`loomd restore` (cli/restore.py) turns the file into a new cluster's first snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from loom.node import snapshotter
from loom.raft.types import ConfState, SnapshotMeta
from loom.state.command import Command
from loom.state.machine import StateMachine
from loom.storage.crypto import Keyring, load_keyring
from loom.storage.fs import OSFileSystem
from loom.storage.snapshot import write_snapshot
from loom.wire.errors import Busy, LoomError, NotFound, Unavailable

log = logging.getLogger("loom.backup")

BACKUP_SUBDIR = "backup"
FILE_CHUNK = 1 << 20  # plaintext bytes per record inside the file (storage's default)


class Log(Protocol):
    """What the saver needs from the Raft driver."""

    leader: str | None
    core: Any

    def state(self) -> StateMachine: ...
    async def read(self, cmd: Command, *, stale: bool = False) -> Any: ...
    def not_leader(self) -> LoomError: ...


@dataclass(frozen=True)
class BackupStats:
    """Counters for NODE_STATS: saves started, completed (last chunk served), bytes served."""

    started: int
    completed: int
    bytes_served: int
    current: str | None  # the id of the file on disk, if any


@dataclass
class _File:
    id: str
    path: Path
    size: int
    header: dict[str, Any]
    touched: float  # trio time of the last request for it


class SnapshotSaver:
    def __init__(self, *, node_id: str, data_dir: Path, log_: Log, clock_ms: Callable[[], int],
                 keyring: Path | None, chunk_bytes: int = 256 << 10, idle_s: float = 300.0,
                 fork: bool = True, keys: Callable[[], Keyring | None] | None = None) -> None:
        self.node_id = node_id
        # The data keys in force (the node's storage: rotated online, possibly unwrapped by an
        # HSM); without it the keyring file is read, which works for a plain keyring only.
        self.keys = keys
        self.dir = Path(data_dir) / BACKUP_SUBDIR
        self.log = log_
        self.clock_ms = clock_ms
        self.keyring = keyring
        self.chunk_bytes = chunk_bytes
        self.idle_s = idle_s
        self.fork = fork and snapshotter.CAN_FORK
        self._file: _File | None = None
        self._building = False
        self._started = self._completed = self._served = 0
        shutil.rmtree(self.dir, ignore_errors=True)  # a previous run's file is never resumed

    def statistics(self) -> BackupStats:
        return BackupStats(self._started, self._completed, self._served,
                           self._file.id if self._file else None)

    async def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        sid = body.get("snapshot")
        if sid is None:
            new = await self._build()
            return {**new.header, **await self._chunk(new, 0)}
        f = self._file
        if f is None or f.id != sid:
            raise NotFound(f"snapshot {sid!r} is not on {self.node_id} any more (replaced, "
                           "expired or taken by another node); start the save again")
        return await self._chunk(f, body.get("offset", 0))

    async def _chunk(self, f: _File, offset: int) -> dict[str, Any]:
        if offset > f.size:
            raise NotFound(f"offset {offset} is past the end of snapshot {f.id} ({f.size} bytes)")
        f.touched = trio.current_time()
        try:
            data = await trio.to_thread.run_sync(_read_at, f.path, offset, self.chunk_bytes)
        except FileNotFoundError:  # a new save replaced it meanwhile
            raise NotFound(f"snapshot {f.id} was replaced by a newer save; start again") from None
        if self._file is not f:  # replaced while this chunk was read: the bytes are still its
            return {"offset": offset, "data": data}
        self._served += len(data)
        if offset + len(data) >= f.size:
            self._completed += 1
            self._drop()
        return {"offset": offset, "data": data}

    def _expire(self) -> None:
        if self._file is not None and trio.current_time() - self._file.touched > self.idle_s:
            log.info("backup %s not fetched for %.0f s: deleted", self._file.id, self.idle_s)
            self._drop()

    def _drop(self) -> None:
        if self._file is not None:
            self._file.path.unlink(missing_ok=True)
            self._file = None

    async def _build(self) -> _File:
        if self._building:
            raise Busy("a snapshot is being saved on this node; retry when it is done",
                       retry_after_ms=1000)
        self._building = True
        try:
            self._drop()
            self._started += 1
            return await self._take()
        finally:
            self._building = False

    async def _take(self) -> _File:
        # 1. Linearizable point: a ReadIndex read on the leader. Everything acknowledged before
        #    this request is applied here once it returns.
        await self.log.read(Command("ACL_GET", {}, self.clock_ms()))
        if self.log.leader != self.node_id:
            raise self.log.not_leader()
        # 2. The state at one applied index: nothing runs between reading the index and the
        #    fork (or the inline serialisation), so the bytes are the state at exactly `index`.
        #    The index is never below the state machine's own: a restored node skips the
        #    entries at or below the state's applied index.
        core = self.log.core
        sm = self.log.state()
        index = max(core.log.applied, sm.applied_index)
        term = core.log.term(index) or core.term
        conf = ConfState(tuple(sorted(core.conf.voters)), tuple(sorted(core.conf.learners)))
        if self.fork:
            data = await snapshotter.start(sm.snapshot).result()
            if data is None:
                raise Unavailable("serialising the snapshot failed; see the node's log")
        else:
            data = sm.snapshot()
        # 3. The file, checksummed and encrypted like the node's own snapshots, off the loop.
        sid = secrets.token_hex(8)
        meta = SnapshotMeta(index, term, conf)
        path, digest, size = await trio.to_thread.run_sync(self._write, sid, meta, data)
        header = {"snapshot": sid, "node": self.node_id, "index": index, "term": term,
                  "size": size, "sha256": digest, "encrypted": self.keyring is not None,
                  "state_bytes": len(data)}
        self._file = _File(sid, path, size, header, trio.current_time())
        log.info("backup %s: snapshot at index %d (%d bytes, %s)", sid, index, size,
                 "encrypted" if self.keyring else "not encrypted")
        return self._file

    def _write(self, sid: str, meta: SnapshotMeta, data: bytes) -> tuple[Path, str, int]:
        work = self.dir / sid
        work.mkdir(parents=True, mode=0o700)
        if self.keys is not None:
            keyring = self.keys() if self.keyring else None
        else:
            keyring = load_keyring(str(self.keyring)) if self.keyring else None
        written = Path(write_snapshot(OSFileSystem(), str(work), meta, [data],
                                      keyring=keyring, max_chunk=FILE_CHUNK))
        path = self.dir / f"{sid}.snap"
        os.replace(written, path)
        work.rmdir()
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return path, h.hexdigest(), path.stat().st_size


def _read_at(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
