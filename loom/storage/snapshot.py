"""Snapshot files: the state machine's snapshot streamed to disk with checksums.

Files live in `<data>/snap/` and are named `<index:016x>-<term:016x>.snap`. A file is a
sequence of records in the WAL framing (`codec`, chained CRC32C):

    SNAP_HEADER  magic, version, index, term, key id, salt, key check, membership (JSON)
    SNAP_CHUNK*  state-machine bytes, at most `max_chunk` each (AES-256-GCM if encrypted)
    SNAP_END     chunk count, total plaintext bytes, CRC32C of the plaintext stream

A snapshot is written to `<name>[tag].tmp` (`write_snapshot_tmp`, possibly in a forked child),
fsynced, renamed into place (`install_snapshot_tmp`) and the directory fsynced:
a file with a final name is always complete, so any check failing in it is corruption (no
torn-tail forgiveness here). Leftover `.tmp` files are deleted at start.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import google_crc32c
from cryptography.exceptions import InvalidTag

from loom.raft.types import ConfState, SnapshotMeta
from loom.storage import codec
from loom.storage.codec import HEADER, HEADER_SIZE, RecordType, Status
from loom.storage.crypto import SALT_SIZE, TAG_SIZE, FileCipher, Keyring, new_salt
from loom.storage.errors import (
    CorruptionError,
    DiskFullError,
    EncryptionKeyError,
    FatalIOError,
)
from loom.storage.fs import File, FileSystem

SNAP_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
SNAP_MAGIC = b"LOOMSNP1"
SNAP_PURPOSE = b"loom/snap/v1"
_HEAD = struct.Struct(f"<8sHQQI{SALT_SIZE}s{TAG_SIZE}s")
_END = struct.Struct("<QQI")
_WRITE_BUFFER = 1 << 20


def snapshot_name(index: int, term: int) -> str:
    return f"{index:016x}-{term:016x}.snap"


def list_snapshots(fs: FileSystem, snap_dir: str) -> list[tuple[int, int, str]]:
    """(index, term, path) of every installed snapshot, oldest first."""
    found = []
    for name in fs.listdir(snap_dir):
        m = SNAP_RE.match(name)
        if m:
            found.append((int(m.group(1), 16), int(m.group(2), 16), os.path.join(snap_dir, name)))
    return sorted(found)


def _file_id(index: int, term: int) -> bytes:
    return struct.pack("<QQ", index, term)


def _conf_json(conf: ConfState) -> bytes:
    doc = {
        "voters": list(conf.voters),
        "learners": list(conf.learners),
        "voters_outgoing": list(conf.voters_outgoing),
        "removed": list(conf.removed),
    }
    return json.dumps(doc, sort_keys=True).encode()


def _conf_from_json(raw: bytes) -> ConfState:
    doc = json.loads(raw)
    parts = []
    for k in ("voters", "learners", "voters_outgoing", "removed"):  # each may be absent
        v = doc.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"bad membership field {k!r}")
        parts.append(tuple(v))
    return ConfState(*parts)


def write_snapshot(
    fs: FileSystem,
    snap_dir: str,
    meta: SnapshotMeta,
    chunks: Iterable[bytes],
    *,
    keyring: Keyring | None,
    max_chunk: int,
) -> str:
    """Stream a snapshot into place atomically; returns its path."""
    tmp, _ = write_snapshot_tmp(fs, snap_dir, meta, chunks, keyring=keyring, max_chunk=max_chunk)
    return install_snapshot_tmp(fs, snap_dir, meta, tmp)


def write_snapshot_tmp(
    fs: FileSystem,
    snap_dir: str,
    meta: SnapshotMeta,
    chunks: Iterable[bytes],
    *,
    keyring: Keyring | None,
    max_chunk: int,
    tag: str = "",
) -> tuple[str, int]:
    """Stream a snapshot to its temporary file and fsync it; returns (temp path, plaintext
    bytes). `install_snapshot_tmp` puts it into place. `tag` tells apart the temp files of
    writers that may run at once (a forked child and the parent); every `.tmp` is deleted at
    start. The chunks are consumed as they come: a state encoded chunk by chunk is never
    whole in memory."""
    w = SnapshotWriter(fs, snap_dir, meta, keyring=keyring, max_chunk=max_chunk, tag=tag)
    try:
        for chunk in chunks:
            w.write(chunk)
        return w.finish()
    except BaseException:
        w.discard()
        raise


class SnapshotWriter:
    """A snapshot's temporary file written as its bytes come: a state encoded a batch at a
    time (`write_snapshot_tmp`), or the chunks of a snapshot received from a leader
    (loom/node/snapshots.py). `write` any number of times, then `finish` (end record, fsync)
    or `discard`. Holds at most one record being gathered (`max_chunk`) and one write buffer
    (`_WRITE_BUFFER`), never the snapshot. After an OSError the file is removed and the
    error raised as DiskFullError or FatalIOError; the writer is then done."""

    def __init__(
        self,
        fs: FileSystem,
        snap_dir: str,
        meta: SnapshotMeta,
        *,
        keyring: Keyring | None,
        max_chunk: int,
        tag: str = "",
    ) -> None:
        self.meta = meta
        self.path = os.path.join(snap_dir, snapshot_name(meta.index, meta.term) + tag + ".tmp")
        self._fs, self._max_chunk = fs, max_chunk
        try:
            if fs.exists(self.path):
                fs.remove(self.path)
            self._f: File | None = fs.open(self.path, exclusive=True)
        except OSError as exc:
            raise _io_error(exc, self.path) from exc
        self._cipher = None
        key_id, salt, check = 0, bytes(SALT_SIZE), bytes(TAG_SIZE)
        if keyring is not None:
            key_id, salt = keyring.active, new_salt()
            self._cipher = FileCipher(
                keyring.keys[key_id], salt, SNAP_PURPOSE, _file_id(meta.index, meta.term)
            )
            check = self._cipher.check_tag()
        self._crc, self._counter, self._offset = 0, 1, 0
        self._count = self._total = self._stream_crc = 0
        self._pending: list[bytes] = []
        self._pending_len = 0
        # Small chunks (an incremental encoder's) are gathered up to max_chunk per record.
        self._acc = bytearray()
        head = _HEAD.pack(SNAP_MAGIC, 1, meta.index, meta.term, key_id, salt, check)
        self._guard(self._put, RecordType.SNAP_HEADER, head + _conf_json(meta.conf))

    @property
    def size(self) -> int:
        """Plaintext bytes written so far."""
        return self._total + len(self._acc)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = self._max_chunk - len(self._acc)
            self._acc += view[:take]
            view = view[take:]
            if len(self._acc) >= self._max_chunk:
                self._guard(self._flush)

    def finish(self) -> tuple[str, int]:
        """The end record, then everything on disk (fsync); returns (path, plaintext bytes).
        `install_snapshot_tmp` puts the file into place."""
        self._guard(self._finish)
        return self.path, self._total

    def discard(self) -> None:
        """Close and remove the file (a failed write, a transfer given up). Idempotent."""
        if self._f is not None:
            self._f.close()
            self._f = None
        _discard(self._fs, self.path)

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        if self._f is None:
            raise ValueError(f"snapshot file {self.path} is already finished or discarded")
        try:
            fn(*args)
        except OSError as exc:
            self.discard()
            raise _io_error(exc, self.path) from exc

    def _finish(self) -> None:
        if self._acc:
            self._flush()
        self._put(RecordType.SNAP_END, _END.pack(self._count, self._total, self._stream_crc))
        assert self._f is not None
        if self._pending:
            self._f.pwrite(self._offset, b"".join(self._pending))
            self._offset += self._pending_len
            self._pending, self._pending_len = [], 0
        self._f.fullsync()
        self._f.close()
        self._f = None

    def _put(self, rtype: int, payload: bytes) -> None:
        flags = 0
        if self._cipher is not None and rtype != RecordType.SNAP_HEADER:
            payload = self._cipher.seal(self._counter, rtype, payload)
            flags = codec.FLAG_ENCRYPTED
        if rtype != RecordType.SNAP_HEADER:
            self._counter += 1
        data, self._crc = codec.encode_record(rtype, flags, payload, self._crc)
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= _WRITE_BUFFER:
            assert self._f is not None
            self._f.pwrite(self._offset, b"".join(self._pending))
            self._offset += self._pending_len
            self._pending, self._pending_len = [], 0

    def _flush(self) -> None:
        piece = bytes(self._acc)
        self._acc.clear()
        self._put(RecordType.SNAP_CHUNK, piece)
        self._stream_crc = google_crc32c.extend(self._stream_crc, piece)
        self._count += 1
        self._total += len(piece)


def install_snapshot_tmp(fs: FileSystem, snap_dir: str, meta: SnapshotMeta, tmp: str) -> str:
    """Rename a written, fsynced temp file into place and fsync the directory; returns the
    path. From here the snapshot is durable under its final name."""
    path = os.path.join(snap_dir, snapshot_name(meta.index, meta.term))
    try:
        fs.rename(tmp, path)
        fs.sync_dir(snap_dir)
    except BaseException as exc:
        _discard(fs, tmp)
        if isinstance(exc, OSError):
            raise _io_error(exc, path) from exc
        raise
    return path


def _discard(fs: FileSystem, tmp: str) -> None:
    try:
        if fs.exists(tmp):
            fs.remove(tmp)
    except OSError:
        pass


def _io_error(exc: OSError, path: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left writing snapshot {path}: {exc}")
    return FatalIOError(f"writing snapshot {path} failed: {exc}")


@dataclass
class SnapshotInfo:
    path: str
    meta: SnapshotMeta
    key_id: int
    chunks: int
    size: int  # plaintext bytes


class SnapshotReader:
    """Reads one snapshot file, checking every record; iterate `chunks()` for the data."""

    def __init__(
        self,
        fs: FileSystem,
        path: str,
        *,
        keyring: Keyring | None,
        max_payload: int,
        decrypt: bool = True,
    ) -> None:
        self.path = path
        self._fs = fs
        self._max = max_payload
        self._decrypt = decrypt
        self._keyring = keyring
        f = fs.open(path)
        try:
            rec, self._crc, self._offset = self._read(f, 0, 0)
        finally:
            f.close()
        if rec[0] != RecordType.SNAP_HEADER or len(rec[2]) < _HEAD.size:
            raise CorruptionError(path, 0, "missing or short snapshot header")
        magic, version, index, term, key_id, salt, check = _HEAD.unpack_from(rec[2])
        if magic != SNAP_MAGIC or version != 1:
            raise CorruptionError(path, 0, f"bad snapshot magic/version {magic!r}/{version}")
        try:
            conf = _conf_from_json(rec[2][_HEAD.size :])
        except ValueError as exc:
            raise CorruptionError(path, 0, f"bad membership: {exc}") from None
        self.meta = SnapshotMeta(index, term, conf)
        self.key_id = key_id
        self._cipher = None
        if key_id and decrypt:
            if keyring is None:
                raise EncryptionKeyError(
                    f"{path} is encrypted with key id {key_id} but no keyring is configured"
                )
            self._cipher = FileCipher(
                keyring.key(key_id, path), salt, SNAP_PURPOSE, _file_id(index, term)
            )
            if not self._cipher.key_matches(check):
                raise EncryptionKeyError(
                    f"key id {key_id} of the keyring does not decrypt {path}: wrong key"
                )

    def _read(self, f: File, offset: int, crc: int) -> tuple[tuple[int, int, bytes], int, int]:
        head = f.pread(offset, HEADER_SIZE)
        length = HEADER.unpack(head)[0] if len(head) == HEADER_SIZE else 0
        buf = head + f.pread(offset + HEADER_SIZE, min(length, self._max))
        rec = codec.decode_at(buf, 0, crc, self._max)
        if rec.status != Status.OK:
            reason = "snapshot ends early" if rec.status == Status.END else rec.reason
            raise CorruptionError(self.path, offset, reason)
        return (rec.rtype, rec.flags, rec.payload), rec.crc, offset + rec.next_offset

    def chunks(self) -> Iterator[bytes]:
        """Yield the data; raises CorruptionError (at the bad record) if a check fails."""
        f = self._fs.open(self.path)
        try:
            crc, offset, counter = self._crc, self._offset, 1
            count = total = stream_crc = 0
            while True:
                at = offset
                (rtype, flags, payload), crc, offset = self._read(f, offset, crc)
                if bool(flags & codec.FLAG_ENCRYPTED) != bool(self.key_id):
                    raise CorruptionError(self.path, at, "encryption flag does not match the file")
                if self._cipher is not None:
                    try:
                        payload = self._cipher.open(counter, rtype, payload)
                    except InvalidTag:
                        raise CorruptionError(self.path, at, "authentication failed") from None
                counter += 1
                if rtype == RecordType.SNAP_CHUNK:
                    count += 1
                    total += len(payload)
                    if self._cipher is not None or not self.key_id:
                        stream_crc = google_crc32c.extend(stream_crc, payload)
                    yield payload
                elif rtype == RecordType.SNAP_END:
                    self._check_end(at, payload, count, total, stream_crc)
                    if f.size() != offset:
                        raise CorruptionError(self.path, offset, "data after the end record")
                    return
                else:
                    raise CorruptionError(self.path, at, f"unexpected record type {rtype}")
        finally:
            f.close()

    def _check_end(self, at: int, payload: bytes, count: int, total: int, stream_crc: int) -> None:
        if self.key_id and self._cipher is None:
            return  # not decrypted: the record CRCs were checked, the contents cannot be
        if len(payload) != _END.size:
            raise CorruptionError(self.path, at, "bad end record")
        e_count, e_total, e_crc = _END.unpack(payload)
        if (e_count, e_total, e_crc) != (count, total, stream_crc):
            raise CorruptionError(
                self.path,
                at,
                f"end record says {e_count} chunks / {e_total} bytes / crc {e_crc:#x}, "
                f"read {count} / {total} / {stream_crc:#x}",
            )

    def verify(self) -> SnapshotInfo:
        count = size = 0
        for chunk in self.chunks():
            count += 1
            size += len(chunk)
        return SnapshotInfo(self.path, self.meta, self.key_id, count, size)
