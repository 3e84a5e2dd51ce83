"""The in-memory Raft log of one core: entries after a compaction point, plus bookkeeping of
what is committed, what has been handed to the driver for persistence and what is applied.

Invariants (checked by callers, relied upon here):
  offset <= applied <= committed <= last_index, and every entry at or below `committed` is
  never truncated. `entries[k].index == offset + 1 + k`.
  `write_from` is the lowest index not yet handed out for persistence; a truncation below it
  moves it back, so the driver rewrites from there (the Ready contract: an entry at index i
  replaces anything stored at i or above).
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from loom.raft.types import Entry


# A compiled build (loom/buildinfo.py) cannot make a native subclass of RuntimeError.
@mypyc_attr(native_class=False)
class LogError(RuntimeError):
    """An operation that would break a log invariant (a bug, or corrupted input)."""


class RaftLog:
    __slots__ = ("applied", "committed", "entries", "offset", "offset_term", "persisted",
                 "write_from")

    def __init__(self, offset: int, offset_term: int, entries: list[Entry], commit: int) -> None:
        for k, e in enumerate(entries):
            if e.index != offset + 1 + k:
                raise LogError("recovered entries are not contiguous after the snapshot")
        self.offset = offset  # index of the last compacted entry (or snapshot)
        self.offset_term = offset_term
        self.entries = entries
        self.committed = max(offset, min(commit, offset + len(entries)))
        self.applied = offset
        self.persisted = offset + len(entries)
        self.write_from = self.persisted + 1

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, i: int) -> int | None:
        """Term of entry i, or None if it is compacted away or beyond the log."""
        if i == self.offset:
            return self.offset_term
        if i < self.offset or i > self.last_index:
            return None
        return self.entries[i - self.offset - 1].term

    def match_term(self, i: int, t: int) -> bool:
        return self.term(i) == t

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi) (lo > offset), at least one if any, at most max_bytes of data."""
        out = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes is not None and len(out) > 1:
            size = 0
            for k, e in enumerate(out):
                size += len(e.data) + 16
                if size > max_bytes and k > 0:
                    return out[:k]
        return out

    def append(self, entries: list[Entry]) -> None:
        """Leader path: add new entries at the end."""
        self.entries.extend(entries)

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack), else 0."""
        for e in entries:
            if e.index <= self.offset:
                continue  # covered by our snapshot, which is committed
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= `index` whose term is <= `term` (fast back-off)."""
        i = min(index, self.last_index)
        while i > self.offset:
            t = self.term(i)
            if t is not None and t <= term:
                return i
            i -= 1
        return self.offset

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Follower path: entries[0] may overwrite an uncommitted suffix."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogError(f"truncating committed entry {first} (commit {self.committed})")
        if first > self.last_index + 1:
            raise LogError("gap in the log")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.write_from = min(self.write_from, first)
        self.persisted = min(self.persisted, first - 1)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index:
                raise LogError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index
            return True
        return False

    def unpersisted(self) -> list[Entry]:
        return self.entries[self.write_from - self.offset - 1 :]

    def compact(self, index: int) -> None:
        """Drop entries up to `index` (must be applied)."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise LogError("compacting beyond the applied index")
        t = self.term(index)
        assert t is not None
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, t

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot at (index, term)."""
        self.entries = []
        self.offset, self.offset_term = index, term
        self.committed = self.applied = self.persisted = index
        self.write_from = index + 1
