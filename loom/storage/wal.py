"""The write-ahead log: segment files, reading them back, and the append path.

Segments live in `<data>/wal/` and are named `<seq:016x>-<first_index:016x>.wal`. Sequence
numbers are consecutive; only the newest segment is ever appended to. A segment is
preallocated to `segment_size`, starts with a SEGMENT_HEADER record, then a STATE record with
the hard state current at its creation (so the newest segment always holds the newest state),
then ENTRY, STATE and SNAPSHOT_MARK records in write order.

Invariants:
* A segment other than the newest one was fsynced and truncated to its data when the next
  one was created, so any damage in it is corruption.
* A segment's file and its header are durable (file fsync + directory fsync) before any
  entry is written into it.
* After recovery the newest segment is truncated to its last good record and closed for
  writing; appends always go to a fresh segment, so a torn tail is never written over.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from loom.raft.types import Entry
from loom.storage import codec
from loom.storage.codec import HEADER_SIZE, RecordType, Status
from loom.storage.crypto import TAG_SIZE, FileCipher, Keyring, new_salt
from loom.storage.errors import (
    CorruptionError,
    DiskFullError,
    EncryptionKeyError,
    FatalIOError,
    StorageError,
)
from loom.storage.fs import File, FileSystem
from loom.storage.records import SegmentHeader, decode_entry, decode_mark, decode_state

log = logging.getLogger("loom.storage")

SEGMENT_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
WAL_PURPOSE = b"loom/wal/v1"


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def list_segments(fs: FileSystem, wal_dir: str) -> list[tuple[int, int, str]]:
    """(seq, first_index, path) of every segment, in sequence order; gaps are corruption."""
    found = []
    for name in fs.listdir(wal_dir):
        m = SEGMENT_RE.match(name)
        if m:
            found.append((int(m.group(1), 16), int(m.group(2), 16), os.path.join(wal_dir, name)))
    found.sort()
    for (s0, _, p0), (s1, _, _) in itertools.pairwise(found):
        if s1 != s0 + 1:
            raise CorruptionError(p0, 0, f"segment {s0 + 1:016x} is missing after this one")
    return found


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


# ----- reading ------------------------------------------------------------------------------


@dataclass
class SegmentScan:
    path: str
    seq: int
    header: SegmentHeader | None  # None: an empty newest segment (crash during creation)
    records: list[tuple[int, bytes, int]] = field(default_factory=list)  # (type, payload, offset)
    end: int = 0  # offset just past the last good record
    size: int = 0
    torn: str | None = None  # why the tail was cut (newest segment only)
    decrypted: bool = True


def _cipher_for(header: SegmentHeader, path: str, keyring: Keyring | None) -> FileCipher:
    if keyring is None:
        raise EncryptionKeyError(
            f"{path} is encrypted with key id {header.key_id} but no keyring is configured"
        )
    cipher = FileCipher(
        keyring.key(header.key_id, path), header.salt, WAL_PURPOSE, header.seq.to_bytes(8, "little")
    )
    if not cipher.key_matches(header.check):
        raise EncryptionKeyError(
            f"key id {header.key_id} of the keyring does not decrypt {path}: wrong key"
        )
    return cipher


def scan_segment(
    fs: FileSystem,
    path: str,
    seq: int,
    *,
    newest: bool,
    keyring: Keyring | None,
    decrypt: bool,
    max_payload: int,
) -> SegmentScan:
    """Read and check one segment. Raises CorruptionError for anything but a torn tail of
    the newest segment, which is reported in `torn` (the caller decides to cut it)."""
    data = fs.read_file(path)
    scan = SegmentScan(path, seq, None, size=len(data))
    first = codec.decode_at(data, 0, 0, max_payload)
    if first.status != Status.OK:
        if newest and first.status in (Status.END, Status.TORN):
            scan.torn = (
                "segment header never reached the disk" if data.count(0) != len(data) else None
            )
            return scan
        raise CorruptionError(path, 0, f"bad segment header: {first.reason or 'empty segment'}")
    if first.rtype != RecordType.SEGMENT_HEADER:
        raise CorruptionError(path, 0, f"first record has type {first.rtype}, not a segment header")
    try:
        header = SegmentHeader.decode(first.payload)
    except ValueError as exc:
        raise CorruptionError(path, 0, str(exc)) from None
    if header.seq != seq:
        raise CorruptionError(path, 0, f"header says segment {header.seq:016x}")
    scan.header = header
    cipher = None
    if header.key_id:
        if decrypt:
            cipher = _cipher_for(header, path, keyring)
        else:
            scan.decrypted = False
    offset, crc, counter = first.next_offset, first.crc, 1
    while True:
        rec = codec.decode_at(data, offset, crc, max_payload)
        if rec.status == Status.OK:
            if rec.rtype == RecordType.SEGMENT_HEADER:
                raise CorruptionError(path, offset, "second segment header")
            encrypted = bool(rec.flags & codec.FLAG_ENCRYPTED)
            if encrypted != bool(header.key_id):
                raise CorruptionError(
                    path, offset, "record encryption flag does not match the segment"
                )
            payload = rec.payload
            if cipher is not None:
                try:
                    payload = cipher.open(counter, rec.rtype, payload)
                except InvalidTag:
                    raise CorruptionError(
                        path, offset, "authentication failed: record altered, moved or reordered"
                    ) from None
            scan.records.append((rec.rtype, payload, offset))
            offset, crc, counter = rec.next_offset, rec.crc, counter + 1
            continue
        if rec.status == Status.END:
            rest = len(data) - offset
            if data.count(0, offset) != rest:
                if not newest:
                    raise CorruptionError(path, offset, "data after the end-of-log marker")
                scan.torn = "unwritten sector followed by data of an interrupted write"
        elif rec.status == Status.TORN and newest:
            scan.torn = rec.reason
        elif rec.status == Status.TORN:
            raise CorruptionError(path, offset, f"{rec.reason} in a segment that is not the newest")
        else:
            raise CorruptionError(path, offset, rec.reason)
        scan.end = offset
        return scan


class LogReplay:
    """Rebuilds the log from records in write order, with Raft's rules: an entry whose index
    is at or below the last one replaces the suffix from there; a snapshot mark that the log
    does not contain (same index and term) discards the whole log, unless it lies before
    the log's first entry (older than the compacted prefix).

    `covered`: entries at or below this index (a snapshot's) are kept without their data. Only
    their terms still matter (log matching against the snapshot, the term runs), and a node
    that starts from the snapshot would otherwise hold every one of them at once while
    replaying: up to `trailing_entries` of them, the whole WAL of a fresh 1M-entry load."""

    def __init__(self, covered: int = 0) -> None:
        self.covered = covered
        self.base_index = 0
        self.base_term = 0
        self.entries: list[Entry] = []
        self.started = False
        self.marks_seen: list[tuple[int, int]] = []

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        if index == self.base_index:
            return self.base_term
        if self.base_index < index <= self.last_index:
            return self.entries[index - self.base_index - 1].term
        return None

    def begin_segment(self, header: SegmentHeader, path: str) -> None:
        if not self.started:
            self.started = True
            self.base_index, self.base_term = header.first_index - 1, header.base_term
            return
        if header.first_index != self.last_index + 1:
            raise CorruptionError(
                path,
                0,
                f"segment starts at index {header.first_index} but the log before it ends at "
                f"{self.last_index}",
            )

    def entry(self, e: Entry, path: str, offset: int) -> None:
        if e.index <= self.covered and e.data:
            e = Entry(e.term, e.index, e.type)
        last = self.last_index
        if e.index == last + 1:
            self.entries.append(e)
        elif self.base_index < e.index <= last:
            del self.entries[e.index - self.base_index - 1 :]
            self.entries.append(e)
        elif 0 < e.index <= self.base_index:
            # An overwrite reaching below the oldest retained segment's start: the entries it
            # replaces were compacted away (compaction keeps every segment that holds entries
            # at or after the snapshot's trailing window, and an overwrite never reaches below
            # the commit index), so the log restarts at e with an unknown previous term (0).
            self.base_index, self.base_term, self.entries = e.index - 1, 0, [e]
        else:
            raise CorruptionError(
                path,
                offset,
                f"entry index {e.index} does not follow the log "
                f"(holds {self.base_index + 1}..{last})",
            )

    def snapshot_mark(self, index: int, term: int) -> None:
        self.marks_seen.append((index, term))
        # At or below the start of the log: compaction removed entries the snapshot covers.
        if index > self.base_index and self.term_at(index) != term:
            self.base_index, self.base_term, self.entries = index, term, []


def replay_scan(replay: LogReplay, scan: SegmentScan, on_state: list[bytes]) -> None:
    if scan.header is None:
        return
    replay.begin_segment(scan.header, scan.path)
    for rtype, payload, offset in scan.records:
        try:
            if rtype == RecordType.ENTRY:
                replay.entry(decode_entry(payload), scan.path, offset)
            elif rtype == RecordType.STATE:
                decode_state(payload)  # validate now, keep the newest
                on_state.append(payload)
            elif rtype == RecordType.SNAPSHOT_MARK:
                replay.snapshot_mark(*decode_mark(payload))
            else:
                raise ValueError(f"record type {rtype} does not belong in a WAL segment")
        except ValueError as exc:
            raise CorruptionError(scan.path, offset, str(exc)) from None


# ----- writing ------------------------------------------------------------------------------


@dataclass
class _Open:
    seq: int
    first_index: int
    path: str
    file: File
    offset: int
    crc: int
    counter: int
    cipher: FileCipher | None


class WalWriter:
    """Appends records to the newest segment, rotating when it is full.

    Not thread-safe: the owner makes one call at a time. A record carries `after`, the log's
    (last index, last term) once the record is applied, which is what a segment created
    after it must name as its start.
    """

    def __init__(
        self,
        fs: FileSystem,
        wal_dir: str,
        *,
        segment_size: int,
        preallocate: bool,
        max_payload: int,
        keyring: Keyring | None,
        segments: list[tuple[int, int, str]],
    ) -> None:
        self.fs = fs
        self.wal_dir = wal_dir
        self.segment_size = segment_size
        self.preallocate = preallocate
        self.max_payload = max_payload
        self.keyring = keyring
        self.segments = list(segments)  # (seq, first_index, path), oldest first
        self.cur: _Open | None = None
        self.last = (0, 0)
        self.state_payload: bytes | None = None

    # The open segment, once create_segment ran.
    def _current(self) -> _Open:
        if self.cur is None:
            raise StorageError("no open WAL segment")
        return self.cur

    def create_segment(self, seq: int) -> None:
        """Create, preallocate and make durable a new segment starting after `self.last`."""
        first_index = self.last[0] + 1
        path = os.path.join(self.wal_dir, segment_name(seq, first_index))
        f = self.fs.open(path, exclusive=True)
        try:
            if self.preallocate:
                f.allocate(self.segment_size)
            cipher = None
            header = SegmentHeader(seq, first_index, self.last[1])
            ring = self.keyring  # read once: a rotation may swap it (Storage.use_keys)
            if ring is not None:
                salt = new_salt()
                cipher = FileCipher(
                    ring.keys[ring.active],
                    salt,
                    WAL_PURPOSE,
                    seq.to_bytes(8, "little"),
                )
                header = SegmentHeader(
                    seq, first_index, self.last[1], ring.active, salt, cipher.check_tag()
                )
            data, crc = codec.encode_record(RecordType.SEGMENT_HEADER, 0, header.encode(), 0)
            opened = _Open(seq, first_index, path, f, len(data), crc, 1, cipher)
            if self.state_payload is not None:
                data += self._encode(opened, RecordType.STATE, self.state_payload)
            opened.offset = len(data)
            f.pwrite(0, data)
            f.fullsync()
            self.fs.sync_dir(self.wal_dir)
        except BaseException:
            f.close()
            try:
                self.fs.remove(path)
            except OSError:
                pass
            raise
        self.cur = opened
        self.segments.append((seq, first_index, path))

    def _encode(self, seg: _Open, rtype: int, payload: bytes) -> bytes:
        flags = 0
        if seg.cipher is not None:
            payload = seg.cipher.seal(seg.counter, rtype, payload)
            flags = codec.FLAG_ENCRYPTED
        data, seg.crc = codec.encode_record(rtype, flags, payload, seg.crc)
        seg.counter += 1
        return data

    def framed_size(self, payload_len: int) -> int:
        return HEADER_SIZE + payload_len + (TAG_SIZE if self.keyring is not None else 0)

    def _seal(self, seg: _Open) -> None:
        """Make a finished segment exactly its data, durable."""
        seg.file.truncate(seg.offset)
        seg.file.fullsync()

    def append(self, records: Sequence[tuple[int, bytes, tuple[int, int] | None]]) -> int:
        """Write records (not synced); returns the bytes written. On ENOSPC everything is
        undone and DiskFullError raised; any other I/O error is fatal."""
        start = self._current()
        saved = (start.offset, start.crc, start.counter, self.last, self.state_payload)
        n_segments = len(self.segments)
        sealed: list[_Open] = []
        buf: list[bytes] = []
        buf_len = 0
        written = 0
        seg = start
        try:
            for rtype, payload, after in records:
                if seg.offset + buf_len + self.framed_size(len(payload)) > self.segment_size:
                    if buf:
                        seg.file.pwrite(seg.offset, b"".join(buf))
                        seg.offset += buf_len
                        written += buf_len
                        buf, buf_len = [], 0
                    self._seal(seg)
                    sealed.append(seg)
                    self.create_segment(seg.seq + 1)
                    seg = self._current()
                rec = self._encode(seg, rtype, payload)
                buf.append(rec)
                buf_len += len(rec)
                if after is not None:
                    self.last = after
                if rtype == RecordType.STATE:
                    self.state_payload = payload
            if buf:
                seg.file.pwrite(seg.offset, b"".join(buf))
                seg.offset += buf_len
                written += buf_len
        except OSError as exc:
            if not _is_disk_full(exc):
                raise FatalIOError(f"write to {seg.path} failed: {exc}") from exc
            for s in [*sealed, seg]:
                if s is not start:
                    s.file.close()
            self._rollback(start, saved, n_segments)
            raise DiskFullError(f"no space left writing the WAL in {self.wal_dir}: {exc}") from exc
        for s in sealed:
            s.file.close()
        return written

    def _rollback(
        self,
        start: _Open,
        saved: tuple[int, int, int, tuple[int, int], bytes | None],
        n_segments: int,
    ) -> None:
        """Undo a partial append: drop segments it created, cut the first one back, sync."""
        try:
            for _seq, _first, path in self.segments[n_segments:]:
                self.fs.remove(path)
            if len(self.segments) > n_segments:
                self.fs.sync_dir(self.wal_dir)
            del self.segments[n_segments:]
            start.offset, start.crc, start.counter, self.last, self.state_payload = saved
            start.file.truncate(start.offset)
            start.file.fullsync()
        except OSError as exc:
            raise FatalIOError(f"could not undo a failed WAL write: {exc}") from exc
        self.cur = start

    def sync(self) -> None:
        seg = self._current()
        try:
            seg.file.sync()
        except OSError as exc:
            raise FatalIOError(f"fdatasync of {seg.path} failed: {exc}") from exc

    def remove_before(self, keep_from: int) -> int:
        """Delete the oldest segments whose entries all lie below `keep_from` (never the
        newest). Oldest first, so a crash in between leaves a contiguous run."""
        removed = 0
        while len(self.segments) >= 2 and self.segments[1][1] <= keep_from:
            _seq, _first, path = self.segments[0]
            self.fs.remove(path)
            del self.segments[0]
            removed += 1
        if removed:
            self.fs.sync_dir(self.wal_dir)
        return removed

    def close(self) -> None:
        if self.cur is not None:
            self.cur.file.close()
            self.cur = None


def cut_torn_tail(fs: FileSystem, scan: SegmentScan) -> None:
    """Truncate the newest segment to its last good record (or remove it if it holds no
    header), durably, and log what was dropped."""
    if scan.header is None:
        log.warning("removing %s: its header never reached the disk (%s)", scan.path, scan.torn)
        fs.remove(scan.path)
        fs.sync_dir(os.path.dirname(scan.path))
        return
    if scan.torn:
        log.warning(
            "torn tail in %s at offset %d: %s; truncating %d bytes",
            scan.path,
            scan.end,
            scan.torn,
            scan.size - scan.end,
        )
    f = fs.open(scan.path)
    try:
        f.truncate(scan.end)
        f.fullsync()
    finally:
        f.close()
