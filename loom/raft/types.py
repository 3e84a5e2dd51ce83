"""The values the Raft core, the storage layer and the node driver exchange.

This module is the persistence contract between `loom.raft` (which decides what must be
durable) and `loom.storage` (which makes it durable). It is pure data: no I/O, no clock.
Node ids are short strings ("n1"); terms and indexes are non-negative ints; index 0 and
term 0 mean "nothing yet".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryType(IntEnum):
    """What an entry's `data` holds."""

    NORMAL = 0  # an encoded state-machine command (opaque to Raft)
    NOOP = 1  # the empty entry a new leader appends at the start of its term
    CONF_CHANGE = 2  # an encoded membership change (see loom.raft)


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves the node."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """Cluster membership. `voters_outgoing` is non-empty only during a joint configuration.
    `removed` lists (sorted) every id removed from the cluster and not re-admitted since: such
    an id is refused until an operator re-admits it explicitly (READMIT), and carrying the list
    here keeps that rule across snapshots and restarts."""

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    voters_outgoing: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot: the state machine after applying every entry up to `index`."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)
