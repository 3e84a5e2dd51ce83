"""Planted bugs for the simulator's mutation check (`python -m loom.sim --mutant NAME`).

Each is a subclass of the real core that overrides one seam (a small method of `RaftCore`
whose docstring states the rule it keeps), so the production path carries no test hook, as
etcd keeps its test hooks apart from the code it ships. A test proves that the simulator
catches every one of them within 200 seeds from a start drawn afresh on every run
(tests/sim/test_sim.py); the profiles that make that so are in `loom.sim.profiles`.
`ack_before_sync` is a driver's bug, planted in the simulator's driver (`loom.sim.cluster`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from loom.raft import messages as m
from loom.raft.config import RaftConfig
from loom.raft.core import RaftCore
from loom.raft.ready import Ready, SnapshotSource
from loom.raft.types import Entry, HardState, SnapshotMeta

MUTANTS: dict[str, str] = {
    "commit_old_term": "count replicas of an old-term entry when advancing commit",
    "forget_vote": "do not persist the vote in the hard state",
    "lease_expired": "serve lease reads without checking the lease has not expired",
    "ack_before_sync": "send messages before the Ready's writes are synced (driver-level)",
    "skip_log_matching": "accept AppendEntries without checking the previous entry's term",
    "ignore_joining": "treat a node that started empty as caught up: it campaigns, votes and "
                      "is counted from the first entries it holds",
}


class _CommitOldTerm(RaftCore):
    def _countable(self, term: int | None) -> bool:
        return term is not None


class _ForgetVote(RaftCore):
    def ready(self) -> Ready | None:
        rd = super().ready()
        if rd is None or rd.hard_state is None:
            return rd
        hs = rd.hard_state
        rd = replace(rd, hard_state=HardState(hs.term, None, hs.commit))
        self._outstanding = rd  # the Ready advance() must be given back
        return rd


class _LeaseExpired(RaftCore):
    def _lease_valid(self) -> bool:
        rr = self._rr
        return self.cfg.lease_reads and not rr.lease_disabled and rr.lease_start is not None


class _SkipLogMatching(RaftCore):
    def _prev_matches(self, msg: m.AppendEntries) -> bool:
        return self.log.offset <= msg.index <= self.log.last_index


class _IgnoreJoining(RaftCore):
    def __init__(self, config: RaftConfig, rng: random.Random,
                 hard_state: HardState | None = None, snapshot: SnapshotMeta | None = None,
                 entries: Sequence[Entry] = (), snapshot_data: bytes | SnapshotSource = b"",
                 joining: bool = False) -> None:
        super().__init__(config, rng, hard_state, snapshot, entries, snapshot_data,
                         joining=False)


_CORES: dict[str, type[RaftCore]] = {
    "commit_old_term": _CommitOldTerm,
    "forget_vote": _ForgetVote,
    "lease_expired": _LeaseExpired,
    "skip_log_matching": _SkipLogMatching,
    "ignore_joining": _IgnoreJoining,
}
assert set(_CORES) | {"ack_before_sync"} == set(MUTANTS)


def core_class(mutant: str | None) -> type[RaftCore]:
    """The core to run: the real one, or the one with `mutant` planted."""
    if mutant is not None and mutant not in MUTANTS:
        raise ValueError(f"unknown mutant {mutant!r}")
    return _CORES.get(mutant or "", RaftCore)
