"""Raft peer messages: frozen dataclasses with a strict wire form.

Every message carries `to`, `frm` and `term`. `to_wire()` returns a dict of CBOR-friendly
primitives; `from_wire()` is the only way a frame from the network becomes a message and
rejects anything malformed with `MalformedMessage` (a `ValueError`): unknown kind, missing or
extra fields, wrong types (a bool is not an int), negative numbers, over-long ids, too many
entries or ids. These frames come off the network from peers, so nothing is trusted.

`RAFT_MESSAGE_NAMES` lists the kinds so the wire catalog can register them under the RAFT
category (peer listener only; never decodable on the client listener).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from loom.raft.types import Entry, EntryType

MAX_ID_LEN = 64
MAX_ENTRIES_PER_MESSAGE = 4096
MAX_IDS = 64
MAX_UINT = (1 << 63) - 1


class MalformedMessage(ValueError):
    """A wire dict that is not a valid Raft message."""


def _uint(v: object) -> int:
    if type(v) is not int or v < 0 or v > MAX_UINT:
        raise MalformedMessage(f"expected a non-negative int, got {type(v).__name__}")
    return v


def _id(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_ID_LEN:
        raise MalformedMessage("expected a node id (1..64 chars)")
    return v


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise MalformedMessage("expected a bool")
    return v


def _bytes(v: object) -> bytes:
    if type(v) is not bytes:
        raise MalformedMessage("expected bytes")
    return v


def _ids(v: object) -> tuple[str, ...]:
    if type(v) is not list or len(v) > MAX_IDS:
        raise MalformedMessage("expected a list of node ids")
    return tuple(_id(x) for x in v)


_ENTRY_TYPES: dict[object, EntryType] = {int(t): t for t in EntryType}


def _entries(v: object) -> tuple[Entry, ...]:
    if type(v) is not list or len(v) > MAX_ENTRIES_PER_MESSAGE:
        raise MalformedMessage("expected a bounded list of entries")
    out: list[Entry] = []
    for e in v:
        if type(e) is not list or len(e) != 4:
            raise MalformedMessage("an entry is [term, index, type, data]")
        term, index, kind, data = e
        # type() first: True == 1 as a dict key, and a bool is not an entry type on the wire
        et = _ENTRY_TYPES.get(kind) if type(kind) is int else None
        if et is None:
            raise MalformedMessage("unknown entry type")
        out.append(Entry(_uint(term), _uint(index), et, _bytes(data)))
    return tuple(out)


def _wire_value(v: object) -> object:
    if type(v) is tuple:
        return [[e.term, e.index, int(e.type), e.data] if type(e) is Entry else e for e in v]
    return v


_DECODERS: dict[str, Callable[[object], object]] = {
    "to": _id,
    "frm": _id,
    "term": _uint,
    "index": _uint,
    "log_term": _uint,
    "commit": _uint,
    "entries": _entries,
    "reject": _bool,
    "reject_hint": _uint,
    "last_index": _uint,
    "last_term": _uint,
    "transfer": _bool,
    "seq": _uint,
    "snap_index": _uint,
    "snap_term": _uint,
    "voters": _ids,
    "learners": _ids,
    "removed": _ids,
    "offset": _uint,
    "data": _bytes,
    "total": _uint,
    "done": _bool,
    "ctx": _bytes,
    "joining": _bool,
}


@dataclass(frozen=True, slots=True)
class Message:
    KIND: ClassVar[str] = ""
    to: str
    frm: str
    term: int

    def to_wire(self) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.KIND}
        for name in _BY_KIND[self.KIND][1]:  # the field names, in order
            v = getattr(self, name)
            if name == "joining" and not v:
                continue  # the common case costs no bytes on every acknowledgement
            d[name] = _wire_value(v)
        return d


@dataclass(frozen=True, slots=True)
class AppendEntries(Message):
    KIND: ClassVar[str] = "RAFT_APPEND_ENTRIES"
    index: int  # index of the entry preceding `entries`
    log_term: int  # term of that entry (the log matching check)
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse(Message):
    KIND: ClassVar[str] = "RAFT_APPEND_RESPONSE"
    index: int  # accepted: last index now known to match; rejected: the rejected prev index
    reject: bool
    reject_hint: int  # on reject: an index at or below which the follower's log may match
    log_term: int  # on reject: the follower's term at reject_hint
    joining: bool = False  # the follower started empty and has not caught up (never counted)


@dataclass(frozen=True, slots=True)
class RequestVote(Message):
    KIND: ClassVar[str] = "RAFT_REQUEST_VOTE"
    last_index: int
    last_term: int
    transfer: bool  # campaign started by TimeoutNow: overrides the live-leader rule


@dataclass(frozen=True, slots=True)
class VoteResponse(Message):
    KIND: ClassVar[str] = "RAFT_VOTE_RESPONSE"
    reject: bool


@dataclass(frozen=True, slots=True)
class PreVote(Message):
    KIND: ClassVar[str] = "RAFT_PRE_VOTE"
    last_index: int
    last_term: int
    transfer: bool


@dataclass(frozen=True, slots=True)
class PreVoteResponse(Message):
    KIND: ClassVar[str] = "RAFT_PRE_VOTE_RESPONSE"
    reject: bool


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    KIND: ClassVar[str] = "RAFT_HEARTBEAT"
    commit: int  # min(follower's match, leader's commit): always safe to apply
    seq: int  # heartbeat round, echoed back; confirms ReadIndex rounds and the lease


@dataclass(frozen=True, slots=True)
class HeartbeatResponse(Message):
    KIND: ClassVar[str] = "RAFT_HEARTBEAT_RESPONSE"
    seq: int
    joining: bool = False  # as in AppendResponse: this acknowledgement confirms nothing


@dataclass(frozen=True, slots=True)
class InstallSnapshot(Message):
    KIND: ClassVar[str] = "RAFT_INSTALL_SNAPSHOT"
    snap_index: int
    snap_term: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    offset: int  # byte offset of `data` within the snapshot
    data: bytes
    total: int  # total snapshot size in bytes
    done: bool  # last chunk
    removed: tuple[str, ...] = ()  # ids removed from the cluster (never to be reused)


@dataclass(frozen=True, slots=True)
class SnapshotResponse(Message):
    KIND: ClassVar[str] = "RAFT_SNAPSHOT_RESPONSE"
    snap_index: int
    offset: int  # bytes of this snapshot the follower holds (next offset wanted)
    reject: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow(Message):
    KIND: ClassVar[str] = "RAFT_TIMEOUT_NOW"


@dataclass(frozen=True, slots=True)
class ReadIndex(Message):
    KIND: ClassVar[str] = "RAFT_READ_INDEX"
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse(Message):
    KIND: ClassVar[str] = "RAFT_READ_INDEX_RESPONSE"
    ctx: bytes
    index: int


MESSAGE_TYPES: tuple[type[Message], ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    PreVote,
    PreVoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    ReadIndex,
    ReadIndexResponse,
)
RAFT_MESSAGE_NAMES: tuple[str, ...] = tuple(t.KIND for t in MESSAGE_TYPES)
_BY_KIND: dict[str, tuple[type[Message], tuple[str, ...]]] = {
    t.KIND: (t, tuple(f.name for f in fields(t))) for t in MESSAGE_TYPES
}
# fields added later with a default; a sender that predates them may leave them out
_OPTIONAL: frozenset[str] = frozenset(
    f.name for t in MESSAGE_TYPES for f in fields(t) if f.default is not MISSING
)


def from_wire(d: object) -> Message:
    """Decode and strictly validate one wire dict. Raises MalformedMessage."""
    if type(d) is not dict:
        raise MalformedMessage("a message is a map")
    kind = d.get("kind")
    if type(kind) is not str or kind not in _BY_KIND:
        raise MalformedMessage("unknown message kind")
    cls, names = _BY_KIND[kind]
    present = [n for n in names if n in d]
    if len(d) != len(present) + 1 or any(n not in d and n not in _OPTIONAL for n in names):
        raise MalformedMessage(f"{kind}: wrong field set")
    kwargs: dict[str, Any] = {n: _DECODERS[n](d[n]) for n in present}
    return cls(**kwargs)
