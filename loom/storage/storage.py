"""`Storage`: the durable state under one Raft node (WAL, hard state, snapshots).

Synchronous and blocking by design: the node's Raft driver calls it from a worker thread
(`trio.to_thread.run_sync` with a CapacityLimiter of 1), one call at a time. `save` is the
group-commit unit: everything passed to one call shares one fdatasync.

Durability contract: when `save(..., must_sync=True)` returns, every entry and the hard state
passed to it and to earlier calls are on disk. A term or vote change is made durable through
the hard-state file (temp, fsync, rename, directory fsync) before `save` returns, even with
must_sync=False. After a `FatalIOError` every call raises it again: the node must stop.
"""

from __future__ import annotations

import bisect
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from loom.raft.types import Entry, HardState, SnapshotMeta
from loom.storage.codec import RecordType
from loom.storage.crypto import Keyring
from loom.storage.errors import (
    DataDirLockedError,
    DiskFullError,
    EncryptionKeyError,
    FatalIOError,
    StorageError,
)
from loom.storage.fs import DirLock, FileSystem, OSFileSystem
from loom.storage.hardstate import HS_NAME, write_hard_state
from loom.storage.kms import KeyStore, open_keystore
from loom.storage.records import ENTRY_OVERHEAD, encode_entry, encode_mark, encode_state
from loom.storage.recovery import SNAP_DIR, WAL_DIR, max_payload, recover_dir
from loom.storage.snapshot import (
    SnapshotReader,
    SnapshotWriter,
    install_snapshot_tmp,
    list_snapshots,
    write_snapshot_tmp,
)
from loom.storage.wal import WalWriter, cut_torn_tail

log = logging.getLogger("loom.storage")

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LOCK_NAME = "LOCK"


@dataclass(frozen=True)
class StorageOptions:
    segment_size: int = 64 * MiB  # WAL segment file size (64 KiB .. 1 GiB)
    preallocate: bool = True  # reserve each segment's space when it is created
    max_record_size: int = 8 * MiB  # largest record payload: entry data + 17 bytes
    trailing_entries: int = 10_000  # entries kept behind a snapshot for slow followers
    snapshots_to_retain: int = 2  # installed snapshot files kept (newest first)
    snapshot_chunk_size: int = 1 * MiB  # snapshot data is stored in chunks of at most this
    keyring_path: str | None = None  # None: no encryption at rest
    # The PIN of the key-encryption key a wrapped keyring names (storage/kms.py).
    kek_pin: bytes | None = field(default=None, repr=False, compare=False)
    pkcs11_module: str | None = None  # the PKCS#11 library a wrapped keyring's KEK is reached by
    verify_snapshot_on_open: bool = True  # read the whole newest snapshot at start
    auto_compact: bool = True  # compact the WAL behind each saved snapshot
    fs: FileSystem | None = field(default=None, compare=False)  # None: the real file system

    def validate(self) -> None:
        checks = [
            (64 * KiB <= self.segment_size <= GiB, "segment_size must be 64 KiB .. 1 GiB"),
            (
                4 * KiB <= self.max_record_size <= self.segment_size // 2,
                "max_record_size must be 4 KiB .. segment_size / 2",
            ),
            (0 <= self.trailing_entries <= 10**9, "trailing_entries must be 0 .. 1e9"),
            (1 <= self.snapshots_to_retain <= 100, "snapshots_to_retain must be 1 .. 100"),
            (
                4 * KiB <= self.snapshot_chunk_size <= self.max_record_size,
                "snapshot_chunk_size must be 4 KiB .. max_record_size",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class Recovered:
    hard_state: HardState
    snapshot: SnapshotMeta | None  # read the data with Storage.load_snapshot()
    entries: list[Entry]  # every entry after the snapshot, in index order
    # trailing entries at or below the snapshot index still on disk (for tools; [] when the
    # storage was opened with keep_retained=False, as a node does)
    retained: list[Entry]
    torn_bytes: int  # bytes cut from a torn WAL tail (0 normally)


class _TermRuns:
    """Which term each index of the log has, as runs (first index, term); tiny in memory."""

    def __init__(self, base_index: int, base_term: int) -> None:
        self.starts = [base_index]
        self.terms = [base_term]
        self.last_index = base_index

    @property
    def base_index(self) -> int:
        return self.starts[0]

    @property
    def last_term(self) -> int:
        return self.terms[-1]

    def term_at(self, index: int) -> int | None:
        if not self.base_index <= index <= self.last_index:
            return None
        return self.terms[bisect.bisect_right(self.starts, index) - 1]

    def append(self, index: int, term: int) -> None:
        """Append at index (<= last+1), dropping any suffix from index on."""
        cut = bisect.bisect_left(self.starts, index)
        del self.starts[max(cut, 1) :], self.terms[max(cut, 1) :]
        if term != self.terms[-1]:
            self.starts.append(index)
            self.terms.append(term)
        self.last_index = index

    def covers(self, index: int, term: int) -> bool:
        """Whether a snapshot at (index, term) is consistent with the log (keeps it)."""
        return index <= self.base_index or self.term_at(index) == term

    def trim_to(self, base_index: int) -> None:
        term = self.term_at(base_index)
        if term is None or base_index <= self.base_index:
            return
        keep = bisect.bisect_right(self.starts, base_index)
        self.starts = [base_index, *self.starts[keep:]]
        self.terms = [term, *self.terms[keep:]]


@dataclass(frozen=True, slots=True)
class StorageStatistics:
    wal_bytes_written: int  # record bytes appended to the WAL since the node started
    wal_segments: int  # WAL segment files now on disk
    fsyncs: int  # WAL syncs (one per persisted Ready batch that must be durable)
    disk_full: int  # writes refused for lack of space (each undone, then retried)


# Called once per save (never per entry), with (entries, seconds appending, seconds syncing or
# None when the save did not sync). Possibly from a worker thread: the callee must be
# thread-safe (prometheus_client's metrics are).
SaveObserver = Callable[[int, float, float | None], None]


class Storage:
    def __init__(
        self,
        fs: FileSystem,
        data_dir: str,
        options: StorageOptions,
        keyring: Keyring | None,
        lock: DirLock,
        writer: WalWriter,
        runs: _TermRuns,
        hs: HardState,
        file_hs: HardState | None,
        snapshot: SnapshotMeta | None,
        snapshot_path: str | None,
    ) -> None:
        self._fs, self._dir, self._opts, self._keyring = fs, data_dir, options, keyring
        self._keystore: KeyStore | None = None
        self._lock: DirLock | None = lock
        self._wal = writer
        self._runs = runs
        self._hs = hs  # newest hard state written to the WAL (or recovered)
        self._file_hs = file_hs  # what the hard-state file holds
        self._snap, self._snap_path = snapshot, snapshot_path
        self._dirty = False  # WAL bytes written but not yet synced
        self._synced_commit = hs.commit  # newest commit index whose record is durable
        self._failed: FatalIOError | None = None
        self._limit = options.max_record_size
        self.on_save: SaveObserver | None = None
        self._wal_bytes = 0
        self._fsyncs = 0
        self._disk_full = 0

    # ----- opening ----------------------------------------------------------------------
    @classmethod
    def open(
        cls, data_dir: str, options: StorageOptions | None = None, *, keep_retained: bool = True
    ) -> tuple[Storage, Recovered]:
        """Recover `data_dir`. `keep_retained=False` (a node, which starts at the snapshot)
        neither returns nor holds the data of the entries the snapshot covers, not even while
        replaying them."""
        opts = options or StorageOptions()
        opts.validate()
        fs = opts.fs or OSFileSystem()
        data_dir = os.path.normpath(data_dir)
        keystore = keyring = None
        if opts.keyring_path:
            keystore = open_keystore(opts.keyring_path, opts.kek_pin, opts.pkcs11_module)
            keyring = keystore.load()
        created = fs.makedirs(data_dir)
        if created:
            fs.sync_dir(os.path.dirname(created[0]))
            for d in created[:-1]:
                fs.sync_dir(d)
        try:
            lock = fs.lock(os.path.join(data_dir, LOCK_NAME))
        except BlockingIOError:
            raise DataDirLockedError(
                f"data directory {data_dir} is in use by another process (lock file {LOCK_NAME})"
            ) from None
        try:
            storage, recovered = cls._open_locked(fs, data_dir, opts, keyring, lock,
                                                  keep_retained)
            storage._keystore = keystore
            return storage, recovered
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(
        cls,
        fs: FileSystem,
        data_dir: str,
        opts: StorageOptions,
        keyring: Keyring | None,
        lock: DirLock,
        keep_retained: bool,
    ) -> tuple[Storage, Recovered]:
        made = False
        for sub in (WAL_DIR, SNAP_DIR):
            path = os.path.join(data_dir, sub)
            if not fs.exists(path):
                fs.mkdir(path)
                made = True
        if made:
            fs.sync_dir(data_dir)
        _remove_temps(fs, data_dir)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # recovery allocates millions of acyclic objects; collections only cost
        try:
            res = recover_dir(
                fs,
                data_dir,
                keyring=keyring,
                max_record_size=opts.max_record_size,
                verify_snapshot=opts.verify_snapshot_on_open,
                keep_records=False,
                keep_covered=keep_retained,
            )
        finally:
            if gc_was_enabled:
                gc.enable()
        replay, snap = res.replay, res.snapshot
        # Repair: cut a torn tail (or tidy the preallocated tail) of the newest segment.
        segments = [(s.header.seq, s.header.first_index, s.path) for s in res.scans if s.header]
        if res.scans:
            newest = res.scans[-1]
            if newest.header is None or newest.end < newest.size:
                cut_torn_tail(fs, newest)
        next_seq = (segments[-1][0] + 1) if segments else (res.scans[-1].seq if res.scans else 1)
        pre_last = (replay.last_index, replay.term_at(replay.last_index) or 0)
        runs = _TermRuns(replay.base_index, replay.base_term)
        for e in replay.entries:
            runs.append(e.index, e.term)
        if snap is not None and not runs.covers(snap.index, snap.term):
            runs = _TermRuns(snap.index, snap.term)
        writer = WalWriter(
            fs,
            os.path.join(data_dir, WAL_DIR),
            segment_size=opts.segment_size,
            preallocate=opts.preallocate,
            max_payload=max_payload(opts.max_record_size),
            keyring=keyring,
            segments=segments,
        )
        writer.last = pre_last
        if res.hard_state != HardState():
            writer.state_payload = encode_state(res.hard_state)
        writer.create_segment(next_seq)
        if snap is not None and res.last_mark != (snap.index, snap.term):
            # The snapshot file was installed but its WAL mark was lost: write it now so a
            # later replay of the WAL alone sees the same log.
            mark = encode_mark(snap.index, snap.term)
            writer.append([(RecordType.SNAPSHOT_MARK, mark, (runs.last_index, runs.last_term))])
            writer.sync()
        writer.last = (runs.last_index, runs.last_term)
        snap_index = snap.index if snap else 0
        entries = (
            [e for e in replay.entries if e.index > snap_index]
            if runs.last_index > snap_index
            else []
        )
        retained = [
            e for e in replay.entries if e.index <= snap_index and runs.term_at(e.index) == e.term
        ] if keep_retained else []
        storage = cls(
            fs,
            data_dir,
            opts,
            keyring,
            lock,
            writer,
            runs,
            res.hard_state,
            res.file_hard_state,
            snap,
            res.snapshot_path,
        )
        recovered = Recovered(res.hard_state, snap, entries, retained, res.torn_bytes)
        log.info(
            "opened %s: hard state %s, snapshot %s, %d entries after it, %d segments",
            data_dir,
            res.hard_state,
            (snap.index, snap.term) if snap else None,
            len(entries),
            len(writer.segments),
        )
        return storage, recovered

    # ----- state ------------------------------------------------------------------------
    @property
    def last_index(self) -> int:
        return self._runs.last_index

    @property
    def hard_state(self) -> HardState:
        return self._hs

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snap

    @property
    def segment_count(self) -> int:
        return len(self._wal.segments)

    # ----- keys (encryption at rest) -----------------------------------------------------
    @property
    def keyring(self) -> Keyring | None:
        """The data keys in force (in memory only); None when nothing is encrypted."""
        return self._keyring

    @property
    def keystore(self) -> KeyStore | None:
        return self._keystore

    def use_keys(self, store: KeyStore, keyring: Keyring) -> None:
        """Put a rotated or rewrapped keyring in force, once `store` holds it durably: the
        next WAL segment and the next snapshot are written with its active key. Every key of
        the keyring in force must still be in it, so every existing file stays readable.

        Safe to call from another thread than the one saving (the node calls it from trio while
        AsyncStorage's worker may be writing): it only swaps references to immutable keyrings,
        each reader takes one reference per file (WalWriter.create_segment, save_snapshot),
        and either keyring decrypts every file, since the new one holds all the old keys."""
        if self._keyring is None:
            raise EncryptionKeyError("this node does not encrypt at rest (no [storage] keyring)")
        missing = set(self._keyring.keys) - set(keyring.keys)
        if missing or any(keyring.keys[k] != v for k, v in self._keyring.keys.items()):
            raise EncryptionKeyError(f"the new keyring lacks or changes key ids {sorted(missing)}")
        self._keystore, self._keyring = store, keyring
        self._wal.keyring = keyring

    def _check(self) -> None:
        if self._failed is not None:
            raise FatalIOError(f"storage stopped after an earlier I/O failure: {self._failed}")
        if self._lock is None:
            raise StorageError("storage is closed")

    def _fatal(self, exc: FatalIOError) -> FatalIOError:
        self._failed = exc
        log.critical("storage failed, the node must stop: %s", exc)
        return exc

    # ----- writing ----------------------------------------------------------------------
    def _validate(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if hard_state is not None and (hard_state.term < self._hs.term or hard_state.commit < 0):
            raise ValueError(f"hard state {hard_state} goes back from {self._hs}")
        if not entries:
            return
        first = entries[0].index
        floor = max(self._runs.base_index, self._snap.index if self._snap else 0)
        if not floor < first <= self._runs.last_index + 1:
            raise ValueError(
                f"entries start at {first}; the log accepts "
                f"{floor + 1}..{self._runs.last_index + 1}"
            )
        if first <= min(self._runs.last_index, self._hs.commit):
            raise ValueError(f"entries at {first} would replace committed entries")
        prev_term = self._runs.term_at(first - 1) or 0
        for i, e in enumerate(entries):
            if e.index != first + i:
                raise ValueError(f"entries are not contiguous at {e.index}")
            if e.term < max(prev_term, 1):
                raise ValueError(f"entry {e.index} has term {e.term} below {prev_term}")
            if len(e.data) + ENTRY_OVERHEAD > self._limit:
                raise ValueError(f"entry {e.index} exceeds max_record_size {self._limit}")
            prev_term = e.term

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], must_sync: bool) -> None:
        """Append entries (one at or below the last index replaces the log from there on),
        record the hard state, and if must_sync make all of it durable with one sync."""
        self._check()
        self._validate(hard_state, entries)
        records: list[tuple[int, bytes, tuple[int, int] | None]] = [
            (RecordType.ENTRY, encode_entry(e), (e.index, e.term)) for e in entries
        ]
        if hard_state is not None and hard_state != self._hs:
            records.append((RecordType.STATE, encode_state(hard_state), None))
        try:
            if hard_state is not None and (
                self._file_hs is None
                or (hard_state.term, hard_state.vote) != (self._file_hs.term, self._file_hs.vote)
            ):
                # A new term or vote is durable before any entry of this call is written, so
                # no entry can outlive the term it belongs to. The file's commit index is the
                # newest one already synced: it may never point past the durable log.
                on_file = HardState(
                    hard_state.term, hard_state.vote, min(hard_state.commit, self._synced_commit)
                )
                write_hard_state(self._fs, self._dir, on_file)  # DiskFullError: nothing changed
                self._file_hs = on_file
            observe = self.on_save
            t0 = time.perf_counter() if observe is not None else 0.0
            if records:
                self._wal_bytes += self._wal.append(records)  # DiskFullError: nothing changed
                self._dirty = True
                for e in entries:
                    self._runs.append(e.index, e.term)
                if hard_state is not None:
                    self._hs = hard_state
            t1 = time.perf_counter() if observe is not None else 0.0
            synced = must_sync and self._dirty
            if synced:
                self._wal.sync()
                self._fsyncs += 1
                self._dirty = False
                self._synced_commit = self._hs.commit
            if observe is not None:
                observe(len(entries), t1 - t0, time.perf_counter() - t1 if synced else None)
        except DiskFullError:
            self._disk_full += 1
            raise
        except FatalIOError as exc:
            raise self._fatal(exc) from exc.__cause__

    def statistics(self) -> StorageStatistics:
        return StorageStatistics(self._wal_bytes, len(self._wal.segments), self._fsyncs,
                                 self._disk_full)

    def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """Install a snapshot: stream it to a file, make it durable, mark the WAL, drop
        old snapshot files beyond the retention count and (by default) compact the log."""
        self._check_snapshot(meta)
        try:
            tmp, _ = self.write_snapshot_tmp(meta, chunks)
        except FatalIOError as exc:
            raise self._fatal(exc) from exc.__cause__
        self.install_snapshot(meta, tmp)

    def write_snapshot_tmp(
        self, meta: SnapshotMeta, chunks: Iterable[bytes], tag: str = ""
    ) -> tuple[str, int]:
        """The first half of `save_snapshot`: the snapshot in a fsynced temp file; returns
        (its path, plaintext bytes). Reads only this object's configuration and writes only
        that file, so a forked child may call it while the parent goes on using the WAL
        (`tag` keeps its temp file apart from the parent's)."""
        return write_snapshot_tmp(self._fs, os.path.join(self._dir, SNAP_DIR), meta, chunks,
                                  keyring=self._keyring,
                                  max_chunk=self._opts.snapshot_chunk_size, tag=tag)

    def snapshot_writer(self, meta: SnapshotMeta, tag: str) -> SnapshotWriter:
        """A temp file to write a snapshot into as its bytes arrive (a leader's chunks):
        `finish` it, read it back with `read_snapshot_tmp`, then `install_snapshot`."""
        self._check_snapshot(meta)
        return SnapshotWriter(self._fs, os.path.join(self._dir, SNAP_DIR), meta,
                              keyring=self._keyring, max_chunk=self._opts.snapshot_chunk_size,
                              tag=tag)

    def read_snapshot_tmp(self, tmp: str) -> SnapshotReader:
        """A finished temp file, read back (every record checked, the end record too) before
        it is installed."""
        self._check()
        return SnapshotReader(self._fs, self._tmp_path(tmp), keyring=self._keyring,
                              max_payload=max_payload(self._opts.max_record_size))

    def _tmp_path(self, tmp: str) -> str:
        if os.path.dirname(tmp) != os.path.join(self._dir, SNAP_DIR) or not tmp.endswith(".tmp"):
            raise ValueError(f"not a snapshot temp file: {tmp}")
        return tmp

    @property
    def child_can_write_snapshots(self) -> bool:
        """Whether `write_snapshot_tmp` called in a forked child writes the parent's files."""
        return self._fs.shared_with_children

    def discard_snapshot_tmp(self, tmp: str) -> None:
        """A temp file that will not be installed (its snapshot was superseded)."""
        self._tmp_path(tmp)
        try:
            if self._fs.exists(tmp):
                self._fs.remove(tmp)
        except OSError as exc:
            raise self._fatal(FatalIOError(f"removing {tmp} failed: {exc}")) from exc

    def install_snapshot(self, meta: SnapshotMeta, tmp: str) -> None:
        """The second half: rename the temp file into place (durable before anything else
        happens), mark the WAL, prune old snapshot files, compact the log behind it."""
        self._check_snapshot(meta)
        snap_dir = os.path.join(self._dir, SNAP_DIR)
        try:
            existed = {p for _, _, p in list_snapshots(self._fs, snap_dir)}
            path = install_snapshot_tmp(self._fs, snap_dir, meta, tmp)
            runs = self._runs
            matches = runs.covers(meta.index, meta.term)
            after = (runs.last_index, runs.last_term) if matches else (meta.index, meta.term)
            try:
                self._wal.append(
                    [(RecordType.SNAPSHOT_MARK, encode_mark(meta.index, meta.term), after)]
                )
            except StorageError:
                if path not in existed:  # undo, so disk and memory agree
                    self._fs.remove(path)
                    self._fs.sync_dir(snap_dir)
                raise
            self._wal.sync()
            self._dirty = False
            self._synced_commit = self._hs.commit
            if not matches:
                self._runs = _TermRuns(meta.index, meta.term)
            self._snap, self._snap_path = meta, path
            self._prune_snapshots(snap_dir)
            if self._opts.auto_compact:
                self.compact(meta.index)
        except FatalIOError as exc:
            raise self._fatal(exc) from exc.__cause__
        except OSError as exc:
            raise self._fatal(FatalIOError(f"snapshot install failed: {exc}")) from exc

    def _check_snapshot(self, meta: SnapshotMeta) -> None:
        self._check()
        if self._snap is not None and meta.index < self._snap.index:
            raise ValueError(
                f"snapshot {meta.index} is older than the installed {self._snap.index}"
            )
        if meta.index < 1 or meta.term < 1:
            raise ValueError("a snapshot needs index >= 1 and term >= 1")

    def _prune_snapshots(self, snap_dir: str) -> None:
        snaps = list_snapshots(self._fs, snap_dir)
        excess = snaps[: max(0, len(snaps) - self._opts.snapshots_to_retain)]
        for _, _, path in excess:
            if path != self._snap_path:
                self._fs.remove(path)
        if excess:
            self._fs.sync_dir(snap_dir)

    def compact(self, up_to_index: int) -> int:
        """Delete WAL segments holding only entries below up_to_index - trailing_entries + 1.
        up_to_index must be covered by the installed snapshot. Returns segments removed."""
        self._check()
        snap_index = self._snap.index if self._snap else 0
        if up_to_index > snap_index:
            raise ValueError(
                f"cannot compact to {up_to_index}: the snapshot covers only {snap_index}"
            )
        keep_from = max(1, up_to_index - self._opts.trailing_entries + 1)
        try:
            removed = self._wal.remove_before(keep_from)
        except OSError as exc:
            raise self._fatal(FatalIOError(f"compaction failed: {exc}")) from exc
        if removed:
            self._runs.trim_to(self._wal.segments[0][1] - 1)
        return removed

    def load_snapshot(self) -> SnapshotReader | None:
        """The installed snapshot: `.meta` and `.chunks()` (checked while read)."""
        self._check()
        if self._snap_path is None:
            return None
        return SnapshotReader(
            self._fs,
            self._snap_path,
            keyring=self._keyring,
            max_payload=max_payload(self._opts.max_record_size),
        )

    def close(self) -> None:
        """Sync what is pending and release the data directory. Idempotent."""
        if self._lock is None:
            return
        try:
            if self._dirty and self._failed is None:
                self._wal.sync()
                self._dirty = False
                self._synced_commit = self._hs.commit
        except FatalIOError as exc:
            raise self._fatal(exc) from exc.__cause__
        finally:
            self._wal.close()
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _remove_temps(fs: FileSystem, data_dir: str) -> None:
    """Temp files are never part of the state: a crash interrupted their writer."""
    removed = False
    tmp = os.path.join(data_dir, HS_NAME + ".tmp")
    if fs.exists(tmp):
        fs.remove(tmp)
        removed = True
    snap_dir = os.path.join(data_dir, SNAP_DIR)
    for name in fs.listdir(snap_dir):
        if name.endswith(".tmp"):
            fs.remove(os.path.join(snap_dir, name))
            removed = True
    if removed:
        fs.sync_dir(data_dir)
        fs.sync_dir(snap_dir)
