"""Record framing shared by WAL segments and snapshot files.

A record on disk is a 12-byte header followed by `length` payload bytes:

    offset 0  u32 LE  length of the payload (1 .. max_record_size)
    offset 4  u8      record type (`RecordType`, never 0)
    offset 5  u8      flags (bit 0: payload is AES-256-GCM ciphertext)
    offset 6  u16 LE  reserved, must be 0
    offset 8  u32 LE  CRC32C over (previous record's CRC, header bytes 0..8, payload)

The CRC is chained: each record's CRC is seeded with the CRC of the record before it in the
same file (the first record is seeded with 0). A stale record left behind in a file can
therefore never be mistaken for the continuation of newer records.

A header of twelve zero bytes marks the end of the data (preallocated space reads as zeros).

Decoding classifies a bad record as TORN when it looks like an interrupted write (it runs past
the end of the file, or one of its disk sectors is entirely zero: a sector the write never
reached) and CORRUPT otherwise. Only the caller knows whether a torn record may be forgiven
(it may only at the tail of the newest WAL segment).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import google_crc32c

HEADER = struct.Struct("<IBBHI")
HEADER_SIZE = HEADER.size  # 12
_PREFIX = struct.Struct("<IBBH")
ZERO_HEADER = bytes(HEADER_SIZE)
SECTOR_SIZE = 512
FLAG_ENCRYPTED = 0x01
_KNOWN_FLAGS = FLAG_ENCRYPTED


class RecordType(IntEnum):
    SEGMENT_HEADER = 1
    ENTRY = 2
    STATE = 3
    SNAPSHOT_MARK = 4
    SNAP_HEADER = 16
    SNAP_CHUNK = 17
    SNAP_END = 18


_KNOWN_TYPES = frozenset(int(t) for t in RecordType)


def encode_record(rtype: int, flags: int, payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    """Frame one record. Returns the bytes and the record's CRC (the seed of the next one)."""
    if not payload:
        raise ValueError("a record payload may not be empty")
    prefix = _PREFIX.pack(len(payload), rtype, flags, 0)
    crc = google_crc32c.extend(google_crc32c.extend(prev_crc, prefix), payload)
    return prefix + crc.to_bytes(4, "little") + payload, crc


class Status(IntEnum):
    OK = 0
    END = 1  # zero header: clean end of the data
    TORN = 2  # looks like an interrupted write
    CORRUPT = 3  # anything else: never forgiven silently


@dataclass(frozen=True, slots=True)
class Decoded:
    status: Status
    offset: int
    rtype: int = 0
    flags: int = 0
    payload: bytes = b""
    crc: int = 0
    next_offset: int = 0
    reason: str = ""


def _has_zero_sector(buf: bytes | memoryview, start: int, end: int) -> bool:
    """True if some sector-aligned piece of buf[start:end] is all zeros (an unwritten sector)."""
    pos = start
    while pos < end:
        stop = min(end, (pos // SECTOR_SIZE + 1) * SECTOR_SIZE)
        if bytes(buf[pos:stop]).count(0) == stop - pos:
            return True
        pos = stop
    return False


def decode_at(buf: bytes, offset: int, prev_crc: int, max_payload: int) -> Decoded:
    """Decode the record starting at `offset` of `buf` (which holds the file's bytes)."""
    size = len(buf)
    if offset + HEADER_SIZE > size:
        rest = buf[offset:]
        if rest.count(0) == len(rest):
            return Decoded(Status.END, offset)
        return Decoded(Status.TORN, offset, reason="partial record header at end of file")
    length, rtype, flags, reserved, crc = HEADER.unpack_from(buf, offset)
    if not (length or rtype or flags or reserved or crc):
        return Decoded(Status.END, offset)
    if length == 0 or length > max_payload:
        status = (
            Status.TORN if _has_zero_sector(buf, offset, offset + HEADER_SIZE) else Status.CORRUPT
        )
        return Decoded(status, offset, reason=f"bad record length {length} (limit {max_payload})")
    end = offset + HEADER_SIZE + length
    if end > size:
        return Decoded(Status.TORN, offset, reason="record runs past the end of the file")
    payload = buf[offset + HEADER_SIZE : end]
    actual = google_crc32c.extend(google_crc32c.extend(prev_crc, buf[offset : offset + 8]), payload)
    if actual != crc:
        status = Status.TORN if _has_zero_sector(buf, offset, end) else Status.CORRUPT
        return Decoded(
            status, offset, reason=f"CRC mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )
    if rtype not in _KNOWN_TYPES or reserved != 0 or flags & ~_KNOWN_FLAGS:
        return Decoded(
            Status.CORRUPT,
            offset,
            reason=f"unknown record type {rtype} / flags {flags:#x} / reserved {reserved}",
        )
    return Decoded(Status.OK, offset, rtype, flags, payload, crc, end)
