"""Majority arithmetic, in one place (as etcd keeps it in `quorum/majority.go`).

Every rule of the core that needs "a majority of the voters" asks here: the commit index (the
largest index a majority has persisted), the newest heartbeat round a majority acknowledged
(ReadIndex and the lease), the outcome of an election, and check-quorum. Who counts is the
caller's decision (a joining node never does, see loom.raft.core); how many is decided here.
Pure functions over the voter ids; nothing iterates a set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum


class VoteResult(Enum):
    WON = 1
    LOST = -1
    PENDING = 0


def majority(voters: int) -> int:
    """How many of `voters` make a majority."""
    return voters // 2 + 1


def quorum_index(voters: Sequence[str], acked: Callable[[str], int]) -> int:
    """The largest value acknowledged by a majority of `voters` (0 when there are none):
    the commit index from match indexes, the confirmed round from heartbeat acknowledgements."""
    values = sorted((acked(v) for v in voters), reverse=True)
    return values[majority(len(values)) - 1] if values else 0


def vote_result(voters: Sequence[str], votes: Mapping[str, bool]) -> VoteResult:
    """An election's outcome from the votes received so far (True granted, False rejected)."""
    need = majority(len(voters))
    if sum(1 for v in voters if votes.get(v) is True) >= need:
        return VoteResult.WON
    if sum(1 for v in voters if votes.get(v) is False) >= need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Sequence[str], active: Callable[[str], bool]) -> bool:
    """Whether a majority of `voters` is `active` (check-quorum)."""
    return sum(1 for v in voters if active(v)) >= majority(len(voters))
