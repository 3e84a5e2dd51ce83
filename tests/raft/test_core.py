from __future__ import annotations

import dataclasses
import random

import pytest

from loom.raft import Busy, NotLeader, RaftConfig, RaftCore, Role
from loom.raft.confchange import ConfChange, ConfChangeError, ConfChangeType, bootstrap
from loom.raft.log import LogError, RaftLog
from loom.raft.types import Entry, HardState
from loom.sim.mutants import core_class


def single(**kw: object) -> RaftCore:
    hs, ents = bootstrap(("n1",))
    core = RaftCore(RaftConfig("n1", **kw), random.Random(1), hs, None, ents)  # type: ignore[arg-type]
    drain(core)
    return core


def drain(core: RaftCore) -> list[Entry]:
    applied: list[Entry] = []
    while (rd := core.ready()) is not None:
        applied.extend(rd.committed_entries)
        core.advance(rd)
    return applied


def elect(core: RaftCore) -> None:
    for _ in range(40):
        core.tick()
        drain(core)
        if core.role is Role.LEADER:
            return
    raise AssertionError("no election")


def test_single_node_commits_only_after_persisting() -> None:
    core = single()
    elect(core)
    idx = core.propose(b"x")
    assert isinstance(idx, int)
    rd = core.ready()
    assert rd is not None and rd.must_sync
    assert [e.data for e in rd.entries] == [b"x"]
    assert rd.committed_entries == ()  # not yet persisted: not counted
    core.advance(rd)
    assert [e.data for e in drain(core)] == [b"x"]


def test_vote_is_synced_before_vote_request() -> None:
    hs, ents = bootstrap(("n1", "n2", "n3"))
    core = RaftCore(RaftConfig("n1", pre_vote=False), random.Random(1), hs, None, ents)
    drain(core)
    for _ in range(40):
        core.tick()
        rd = core.ready()
        if rd is not None and rd.messages:
            assert rd.hard_state is not None and rd.hard_state.vote == "n1" and rd.must_sync
            return
        if rd is not None:
            core.advance(rd)
    raise AssertionError("never campaigned")


def test_calls_between_ready_and_advance_are_refused() -> None:
    core = single()
    elect(core)
    core.propose(b"x")
    rd = core.ready()
    assert rd is not None
    with pytest.raises(RuntimeError):
        core.tick()
    core.advance(rd)


def test_follower_refuses_with_leader_hint_and_busy_bound() -> None:
    hs, ents = bootstrap(("n1", "n2", "n3"))
    core = RaftCore(RaftConfig("n1"), random.Random(1), hs, None, ents)
    assert core.propose(b"x") == NotLeader(None)
    leader = single(max_uncommitted_bytes=10)
    elect(leader)
    assert isinstance(leader.propose(b"12345678"), int)
    assert isinstance(leader.propose(b"12345678"), Busy)  # before it is committed
    drain(leader)
    assert isinstance(leader.propose(b"12345678"), int)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RaftConfig("n1", heartbeat_tick=10)
    with pytest.raises(ValueError):
        RaftConfig("n1", lease_reads=True, check_quorum=False)
    with pytest.raises(ValueError):
        core_class("nope")  # planted bugs live in the simulator, not in the config
    # fields(), not __slots__: a compiled RaftConfig (loom/buildinfo.py) has no __slots__
    assert core_class(None) is RaftCore
    assert "mutant" not in {f.name for f in dataclasses.fields(RaftConfig)}


def test_log_refuses_to_truncate_committed() -> None:
    log = RaftLog(0, 0, [Entry(1, 1), Entry(1, 2)], commit=2)
    with pytest.raises(LogError):
        log.truncate_and_append([Entry(2, 2)])
    assert log.find_conflict_by_term(2, 0) == 0


def test_conf_change_codec() -> None:
    cc = ConfChange(ConfChangeType.ADD_LEARNER, "n9")
    assert ConfChange.decode(cc.encode()) == cc
    for bad in (b"", b"add_voter", b"jump n1", b"\xff n1", b"remove " + b"x" * 70):
        with pytest.raises(ConfChangeError):
            ConfChange.decode(bad)


def test_restart_replays_committed_entries() -> None:
    _, ents = bootstrap(("n1", "n2"))
    core = RaftCore(RaftConfig("n1"), random.Random(1), HardState(5, "n2", 2), None, ents)
    applied = drain(core)
    assert [e.index for e in applied] == [1, 2]
    assert core.conf.voters == ("n1", "n2")
    assert core.term == 5 and core.vote == "n2"


def test_removed_ids_survive_snapshot_and_restart() -> None:
    core = single()
    elect(core)
    for kind in (ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE):
        assert isinstance(core.propose_conf_change(ConfChange(kind, "n2")), int)
        drain(core)
    assert core.conf.removed == ("n2",)
    # the snapshot carries the removed ids; the log behind it is compacted away
    meta = core.snapshot_taken(core.log.applied, b"state")
    assert meta.conf.removed == ("n2",) and meta.conf.voters == ("n1",)
    again = RaftCore(RaftConfig("n1", trailing_entries=0), random.Random(2),
                     core.hard_state(), meta, (), b"state")
    drain(again)
    elect(again)
    refused = again.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "n2"))
    assert isinstance(refused, Busy) and "explicit re-admission" in refused.reason
    assert isinstance(again.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "n3")), int)


def test_apply_change_records_removals() -> None:
    from loom.raft.confchange import apply_change, check_change
    from loom.raft.types import ConfState

    conf = ConfState(("n1", "n2", "n3"), ("n4",))
    conf = apply_change(conf, ConfChange(ConfChangeType.REMOVE, "n4"))
    conf = apply_change(conf, ConfChange(ConfChangeType.REMOVE, "n2"))
    assert conf == ConfState(("n1", "n3"), (), (), ("n2", "n4"))
    conf = apply_change(conf, ConfChange(ConfChangeType.ADD_LEARNER, "n5"))
    assert conf.removed == ("n2", "n4")
    assert check_change(conf, ConfChange(ConfChangeType.ADD_VOTER, "n2")) is not None
    assert apply_change(conf, ConfChange(ConfChangeType.REMOVE, "n9")) == conf  # not a member


def test_a_removed_id_comes_back_only_by_explicit_readmission_as_a_learner() -> None:
    from loom.raft.confchange import apply_change, check_change
    from loom.raft.types import ConfState

    conf = ConfState(("n1", "n2", "n3"), (), (), ("n4",))
    readmit = ConfChange(ConfChangeType.READMIT, "n4")
    assert ConfChange.decode(readmit.encode()) == readmit
    for kind in (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER):
        assert "re-admission" in (check_change(conf, ConfChange(kind, "n4")) or "")
    assert "not removed" in (check_change(conf, ConfChange(ConfChangeType.READMIT, "n3")) or "")
    assert check_change(conf, readmit) is None
    back = apply_change(conf, readmit)
    assert back == ConfState(("n1", "n2", "n3"), ("n4",), (), ())  # a learner, off the list
    assert apply_change(back, readmit) == back  # applied twice: no change on any replica
    assert check_change(back, ConfChange(ConfChangeType.ADD_VOTER, "n4")) is None  # promotable
    gone_again = apply_change(back, ConfChange(ConfChangeType.REMOVE, "n4"))
    assert gone_again.removed == ("n4",)


def test_readmission_through_the_core_then_promotion() -> None:
    # n3 is removed, re-admitted as a learner, catches up, and is promoted.
    from loom.sim.script import Script

    out = Script().run("\n".join([
        "add-nodes 3", "campaign n1", "stabilize",
        "conf n1 remove n3", "stabilize",
        "conf n1 add-learner n3",
        "conf n1 readmit n3", "stabilize",
        "propose n1 x", "stabilize",
        "conf n1 add-voter n3", "stabilize",
        "status",
    ]))
    assert "n3 was removed; only an explicit re-admission adds it again" in out, out
    assert "n3 applies 7/2 NORMAL b'x'" in out, out  # the re-admitted learner caught up
    assert ("n1: leader term=2 leader=n1 commit=8 applied=8 last=8 voters=n1,n2,n3 learners=\n"
            in out), out


@pytest.mark.parametrize(("entries", "max_bytes", "kept"), [
    (100, 1 << 30, None),  # neither bound reached: nothing is compacted
    (3, 1 << 30, 3),  # by the count
    (100, 350, 3),  # by the bytes: 3 entries of 100 bytes fit in 350, a 4th does not
    (100, 99, 0),  # not even one
])
def test_trailing_entries_behind_a_snapshot_are_bounded_in_count_and_bytes(
        entries: int, max_bytes: int, kept: int | None) -> None:
    core = single(trailing_entries=entries, trailing_bytes=max_bytes)
    elect(core)
    for _ in range(8):
        assert isinstance(core.propose(b"x" * 100), int)
        drain(core)
    applied, offset = core.log.applied, core.log.offset
    core.snapshot_taken(applied, b"state")
    if kept is None:
        assert core.log.offset == offset
        return
    assert core.log.offset == applied - kept
    assert [len(e.data) for e in core.log.entries] == [100] * kept


def _follower_of_n1(**kw: object) -> RaftCore:
    """n2 of a 3-node cluster, following n1 in term 2."""
    from loom.raft import messages as m

    hs, ents = bootstrap(("n1", "n2", "n3"))
    core = RaftCore(RaftConfig("n2", **kw), random.Random(7), hs, None, ents)  # type: ignore[arg-type]
    drain(core)
    core.step(m.Heartbeat("n2", "n1", 2, 0, 1))
    drain(core)
    assert core.role is Role.FOLLOWER and core.leader == "n1"
    return core


def _ticks_to_campaign(core: RaftCore) -> int:
    for n in range(1, 100):
        core.tick()
        drain(core)
        if core.role is not Role.FOLLOWER:
            return n
    raise AssertionError("no campaign")


def test_a_follower_told_its_leader_is_gone_campaigns_within_gone_ticks() -> None:
    from loom.raft.core import GONE_TICKS

    for seed in range(20):
        core = _follower_of_n1()
        core._rng.seed(seed)
        core.peer_gone("n1")
        assert core.leader is None
        assert _ticks_to_campaign(core) <= GONE_TICKS
        assert core.role is Role.PRE_CANDIDATE  # still asks a majority first


@pytest.mark.parametrize("kw", [{"lease_reads": True}, {"pre_vote": False},
                                {"fast_failover": False}], ids=str)
def test_peer_gone_is_ignored_where_timing_matters_or_when_off(kw: dict[str, object]) -> None:
    """With lease reads a leader counts on every follower honouring it for election_tick_min;
    without PreVote an early campaign would raise the term and depose a live leader."""
    core = _follower_of_n1(**kw)
    core.peer_gone("n1")
    assert core.leader == "n1"
    assert _ticks_to_campaign(core) >= core.cfg.election_tick_min


def test_peer_gone_of_another_peer_changes_nothing() -> None:
    core = _follower_of_n1()
    core.peer_gone("n3")
    assert core.leader == "n1"
    assert _ticks_to_campaign(core) >= core.cfg.election_tick_min
