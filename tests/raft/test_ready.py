"""ready.plan(): the two overlaps the Ready contract allows, and nothing else."""

from __future__ import annotations

from loom.raft import messages as m
from loom.raft.ready import Ready, plan
from loom.raft.types import Entry, HardState, SnapshotMeta

APPEND = m.AppendEntries("n2", "n1", 3, 4, 3, (Entry(3, 5),), 4)
BEAT = m.Heartbeat("n3", "n1", 3, 4, 7)
VOTE = m.VoteResponse("n2", "n1", 3, False)
ACK = m.AppendResponse("n1", "n2", 3, 5, False, 0, 0)
SYNCED = HardState(3, "n1", 4)


def ready(*msgs: m.Message, hs: HardState | None = None,
          snapshot: SnapshotMeta | None = None) -> Ready:
    return Ready(None, hs, (Entry(3, 5),), True, snapshot, msgs, (Entry(3, 4),), ())


def test_a_leaders_replication_leaves_before_the_write() -> None:
    p = plan(ready(APPEND, VOTE, BEAT, hs=HardState(3, "n1", 5)), SYNCED)  # commit only
    assert p.early == (APPEND, BEAT) and p.late == (VOTE,) and p.apply_first


def test_nothing_leaves_early_when_the_term_or_vote_is_not_yet_durable() -> None:
    for hs in (HardState(4, "n1", 4), HardState(3, None, 4), HardState(3, "n2", 4)):
        p = plan(ready(APPEND, BEAT, hs=hs), SYNCED)
        assert p.early == () and p.late == (APPEND, BEAT), hs


def test_responses_wait_for_the_sync() -> None:
    p = plan(ready(ACK, VOTE), SYNCED)
    assert p.early == () and p.late == (ACK, VOTE)


def test_a_snapshot_is_carried_out_strictly_in_order() -> None:
    snap = SnapshotMeta()
    assert not plan(ready(APPEND, snapshot=snap), SYNCED).apply_first
    assert plan(ready(), SYNCED).apply_first
