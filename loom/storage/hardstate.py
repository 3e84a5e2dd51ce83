"""The hard-state file `<data>/hardstate`: term, vote and commit, replaced atomically.

Contents: one record in the WAL framing (type STATE, CRC32C) whose payload is `LOOMHS01`
followed by the STATE payload of `records`. Written as `hardstate.tmp`, fsynced, renamed over
`hardstate`, then the directory is fsynced; a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import errno
import os

from loom.raft.types import HardState
from loom.storage import codec
from loom.storage.codec import RecordType, Status
from loom.storage.errors import CorruptionError, DiskFullError, FatalIOError
from loom.storage.fs import FileSystem
from loom.storage.records import decode_state, encode_state

HS_NAME = "hardstate"
HS_MAGIC = b"LOOMHS01"


def read_hard_state(fs: FileSystem, data_dir: str) -> HardState | None:
    path = os.path.join(data_dir, HS_NAME)
    if not fs.exists(path):
        return None
    data = fs.read_file(path)
    rec = codec.decode_at(data, 0, 0, 4096)
    if rec.status != Status.OK or rec.rtype != RecordType.STATE:
        raise CorruptionError(path, 0, rec.reason or "not a hard-state record")
    if rec.next_offset != len(data):
        raise CorruptionError(path, rec.next_offset, "trailing bytes after the hard state")
    if not rec.payload.startswith(HS_MAGIC):
        raise CorruptionError(path, codec.HEADER_SIZE, "bad hard-state magic")
    try:
        return decode_state(rec.payload[len(HS_MAGIC) :])
    except ValueError as exc:
        raise CorruptionError(path, codec.HEADER_SIZE, str(exc)) from None


def write_hard_state(fs: FileSystem, data_dir: str, hs: HardState) -> None:
    """Durably replace the hard-state file. DiskFullError leaves the old file in place;
    any other failure is fatal (the file's state is then unknown)."""
    path = os.path.join(data_dir, HS_NAME)
    tmp = path + ".tmp"
    data, _ = codec.encode_record(RecordType.STATE, 0, HS_MAGIC + encode_state(hs), 0)
    try:
        if fs.exists(tmp):
            fs.remove(tmp)
        f = fs.open(tmp, exclusive=True)
        try:
            f.pwrite(0, data)
            f.fullsync()
        finally:
            f.close()
        fs.rename(tmp, path)
        fs.sync_dir(data_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                if fs.exists(tmp):
                    fs.remove(tmp)
            except OSError:
                pass
            raise DiskFullError(f"no space left writing {path}: {exc}") from exc
        raise FatalIOError(f"persisting {path} failed: {exc}") from exc
