"""Payload layouts of the WAL record types (all integers little-endian)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from loom.raft.types import Entry, EntryType, HardState
from loom.storage.crypto import SALT_SIZE, TAG_SIZE

SEGMENT_MAGIC = b"LOOMWAL1"
FORMAT_VERSION = 1
MAX_VOTE_BYTES = 255

_SEG = struct.Struct(f"<8sHQQQI{SALT_SIZE}s{TAG_SIZE}s")
_ENTRY = struct.Struct("<QQB")
_STATE = struct.Struct("<QQB")
_MARK = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """First record of every segment. `first_index` is the index the segment's first entry
    was expected to have when it was created (the log's last index + 1) and `base_term` the
    term of the entry just before it, so the log can be replayed from any segment on."""

    seq: int
    first_index: int
    base_term: int
    key_id: int = 0  # 0: records are plaintext
    salt: bytes = bytes(SALT_SIZE)
    check: bytes = bytes(TAG_SIZE)

    def encode(self) -> bytes:
        return _SEG.pack(
            SEGMENT_MAGIC,
            FORMAT_VERSION,
            self.seq,
            self.first_index,
            self.base_term,
            self.key_id,
            self.salt,
            self.check,
        )

    @staticmethod
    def decode(payload: bytes) -> SegmentHeader:
        if len(payload) != _SEG.size:
            raise ValueError(f"segment header is {len(payload)} bytes, expected {_SEG.size}")
        magic, version, seq, first, base_term, key_id, salt, check = _SEG.unpack(payload)
        if magic != SEGMENT_MAGIC:
            raise ValueError(f"bad segment magic {magic!r}")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported segment format version {version}")
        return SegmentHeader(seq, first, base_term, key_id, salt, check)


def encode_entry(e: Entry) -> bytes:
    return _ENTRY.pack(e.term, e.index, int(e.type)) + e.data


ENTRY_OVERHEAD = _ENTRY.size


_ENTRY_TYPES = {int(t): t for t in EntryType}


def decode_entry(payload: bytes) -> Entry:
    if len(payload) < _ENTRY.size:
        raise ValueError("entry record too short")
    term, index, etype = _ENTRY.unpack_from(payload)
    kind = _ENTRY_TYPES.get(etype)
    if kind is None:
        raise ValueError(f"unknown entry type {etype}")
    return Entry(term, index, kind, payload[_ENTRY.size :])


def encode_state(hs: HardState) -> bytes:
    vote = b"" if hs.vote is None else hs.vote.encode("utf-8")
    if len(vote) > MAX_VOTE_BYTES:
        raise ValueError(f"vote {hs.vote!r} is longer than {MAX_VOTE_BYTES} bytes")
    return _STATE.pack(hs.term, hs.commit, 0 if hs.vote is None else 1) + vote


def decode_state(payload: bytes) -> HardState:
    if len(payload) < _STATE.size:
        raise ValueError("state record too short")
    term, commit, has_vote = _STATE.unpack_from(payload)
    vote_bytes = payload[_STATE.size :]
    if has_vote not in (0, 1) or (has_vote == 0 and vote_bytes):
        raise ValueError("bad vote encoding")
    vote = vote_bytes.decode("utf-8") if has_vote else None
    return HardState(term, vote, commit)


def encode_mark(index: int, term: int) -> bytes:
    return _MARK.pack(index, term)


def decode_mark(payload: bytes) -> tuple[int, int]:
    if len(payload) != _MARK.size:
        raise ValueError("snapshot mark has the wrong size")
    index, term = _MARK.unpack(payload)
    return index, term


def merge_hard_states(a: HardState, b: HardState) -> HardState:
    """The newer of two persisted hard states: terms and commit only grow, and a vote, once
    cast in a term, never changes within that term."""
    commit = max(a.commit, b.commit)
    if a.term != b.term:
        newer = a if a.term > b.term else b
        return HardState(newer.term, newer.vote, commit)
    return HardState(a.term, a.vote if a.vote is not None else b.vote, commit)
