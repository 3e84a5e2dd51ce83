"""Safety invariants, checked by the simulator after every persistence, commit, apply,
leadership change and read; a breach raises `Violation` at the step that caused it.

  election safety      at most one leader per term
  log matching         two entries with the same (index, term) carry the same command and
                       follow the same previous term (checked on every entry as it is
                       persisted, which by induction gives identical prefixes)
  leader completeness  a node that becomes leader in term T holds every entry that was
                       committed (anywhere) by a node in a term below T
  state-machine safety no two nodes commit or apply different entries at one index
  monotonicity         within one incarnation commit and apply never go backwards and apply
                       is contiguous (the driver checks apply; `on_commit` checks commit)
  no stale reads       a linearizable read is answered at an index >= the highest commit
                       index any node knew when the read was requested
"""

from __future__ import annotations

from loom.raft.core import RaftCore
from loom.raft.types import Entry


class Violation(AssertionError):
    """A safety invariant does not hold."""


class Oracle:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self._seen: dict[tuple[int, int], tuple[Entry, int | None]] = {}
        self.decided: dict[int, Entry] = {}
        self.commit_term: dict[int, int] = {}
        self.max_commit = 0

    def on_leader(self, node: str, core: RaftCore) -> None:
        term = core.term
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise Violation(f"election safety: {other} and {node} both lead term {term}")
        log = core.log
        for i in range(log.offset + 1, self.max_commit + 1):
            e = self.decided.get(i)
            if e is None or self.commit_term.get(i, term) >= term:
                continue
            if log.term(i) != e.term:
                raise Violation(
                    f"leader completeness: {node} leads term {term} without committed "
                    f"entry {i} (term {e.term}); it has term {log.term(i)}"
                )

    def on_persist(self, node: str, core: RaftCore, entries: tuple[Entry, ...]) -> None:
        log = core.log
        for e in entries:
            prev = log.term(e.index - 1)
            key = (e.index, e.term)
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = (e, prev)
                continue
            se, sprev = seen
            if se != e or (prev is not None and sprev is not None and prev != sprev):
                raise Violation(
                    f"log matching: {node} persisted {e} after term {prev}; another node had "
                    f"{se} after term {sprev}"
                )
            if sprev is None and prev is not None:
                self._seen[key] = (se, prev)

    def on_commit(self, node: str, core: RaftCore, old: int, new: int) -> None:
        if new < old:
            raise Violation(f"monotonic commit: {node} commit went from {old} to {new}")
        log = core.log
        for i in range(max(old, log.offset) + 1, new + 1):
            e = log.entries[i - log.offset - 1]
            self._decide(node, e, "committed")
            self.commit_term.setdefault(i, core.term)
        self.max_commit = max(self.max_commit, new)

    def on_apply(self, node: str, e: Entry) -> None:
        self._decide(node, e, "applied")

    def _decide(self, node: str, e: Entry, what: str) -> None:
        d = self.decided.setdefault(e.index, e)
        if d != e:
            raise Violation(f"state-machine safety: {node} {what} {e} but {d} was decided")

    def on_read(self, node: str, ctx: bytes, index: int, floor: int) -> None:
        if index < floor:
            raise Violation(
                f"stale read: {node} answered read {ctx!r} at index {index} but index "
                f"{floor} was already committed when it was requested"
            )
