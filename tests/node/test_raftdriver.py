"""The log driver's callback contract (`RaftDriver.submit`): every submitted command is answered
exactly once, by its apply, a refusal, its deadline or the driver stopping, even while the
driver itself is stuck on a full disk."""

from __future__ import annotations

import pytest
import trio

from loom.node.config import RaftSettings
from loom.node.membership import AddMember, Transfer, parse_admin
from loom.node.raftdriver import RaftDriver, prepare_storage
from loom.node.replicator import OnDone
from loom.node.waiters import Waiter, Waiters
from loom.state.command import Command, Outcome
from loom.storage.faultfs import FaultFS
from loom.storage.fs import FileSystem
from loom.storage.storage import Storage, StorageOptions
from loom.wire import errors as E

Answers = list[tuple[Outcome | None, E.LoomError | None]]


def open_log(fs: FileSystem, settings: RaftSettings, data_dir: str = "/data") -> RaftDriver:
    storage, recovered = Storage.open(data_dir, StorageOptions(
        segment_size=64 * 1024, max_record_size=16 * 1024,
        snapshot_chunk_size=4096, fs=fs, preallocate=False))
    recovered = prepare_storage(storage, recovered, ["n1"])
    return RaftDriver(settings, storage, recovered, node_id="n1", client_addr="127.0.0.1:1",
                      inbox=64, member_addrs={})


def put(key: str, value: bytes = b"v") -> Command:
    return Command("MAP_PUT", {"name": "m", "key": key, "value": value}, 1_000)


def recorder(answers: Answers) -> OnDone:
    def on_done(out: Outcome | None, err: E.LoomError | None) -> None:
        answers.append((out, err))
    return on_done


async def test_each_write_and_read_is_answered_once() -> None:
    log = open_log(FaultFS(1), RaftSettings(tick_ms=10))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        writes: list[Answers] = [[] for _ in range(50)]
        for i, ans in enumerate(writes):
            log.submit(put(f"k{i}"), read=False, on_done=recorder(ans))
        for _ in range(200):
            if all(writes):
                break
            await trio.sleep(0.01)
        assert [len(a) for a in writes] == [1] * 50
        assert all(err is None and out is not None and out.value is None
                   for a in writes for out, err in a)
        read: Answers = []
        log.submit(Command("MAP_GET", {"name": "m", "key": "k7"}, 1_000), read=True,
                   on_done=recorder(read))
        assert read and read[0][0] is not None and read[0][0].value == b"v"  # one node: at once
        log.stop()


async def test_a_write_stuck_on_a_full_disk_times_out_once_and_later_applies() -> None:
    fs = FaultFS(2)
    log = open_log(fs, RaftSettings(tick_ms=10, proposal_timeout_s=0.3))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        first: Answers = []
        log.submit(put("a"), read=False, on_done=recorder(first))
        while not first:
            await trio.sleep(0.01)
        assert first[0][1] is None

        fs.capacity = fs.used_bytes()  # the next write finds the disk full
        stuck: Answers = []
        log.submit(put("b", b"x" * 100), read=False,  # no room left: refused
                   on_done=recorder(stuck))
        with trio.fail_after(5):
            while not stuck:
                await trio.sleep(0.01)
        # The driver is still retrying the save; the ticker answered the caller meanwhile.
        assert isinstance(stuck[0][1], E.Timeout), stuck
        assert log.disk_full
        refused: list[E.LoomError] = []
        try:
            log.submit(put("c"), read=False, on_done=recorder([]))
        except E.LimitExceeded as e:
            refused.append(e)
        assert refused, "a write was accepted while the disk was full"

        def recovered() -> bool:
            got = log.state().read(Command("MAP_GET", {"name": "m", "key": "b"}, 1_000))
            return not log.disk_full and got.value is not None

        fs.capacity = None  # space returns: the stuck batch is saved and applied
        with trio.fail_after(10):
            while not recovered():
                await trio.sleep(0.05)
        assert len(stuck) == 1  # its outcome was reported as unknown, and only once
        log.stop()


def test_a_stopped_driver_reports_proposed_writes_as_unknown_and_the_rest_as_unavailable(
        ) -> None:
    """A proposed write may still commit under the next leader: answering it UNAVAILABLE
    ("not executed, safe to retry") let a client report as failed a write that was applied."""
    w = Waiters(write_timeout_s=30, read_timeout_s=30)
    proposed: Answers = []
    queued: Answers = []
    a = Waiter(put("a"), recorder(proposed), 30.0, "MAP_PUT")
    b = Waiter(put("b"), recorder(queued), 30.0, "MAP_PUT")
    w.write_started(a)
    w.write_started(b)
    w.proposals[7] = a
    w.stop()
    assert isinstance(proposed[0][1], E.Timeout) and "may or may not" in str(proposed[0][1])
    assert isinstance(queued[0][1], E.Unavailable)
    assert len(proposed) == len(queued) == 1 and not w.proposals


def get(key: str) -> Command:
    return Command("MAP_GET", {"name": "m", "key": key}, 1_000)


def test_reads_asked_in_another_term_or_long_ago_are_asked_again_until_their_deadline(
        ) -> None:
    """A follower's ReadIndex request, or the leader's answer, may be lost (the link was down,
    the leader changed or shed it): nothing would ever answer that context. `ask_again` puts
    the reads of a request asked `patience` ticks ago, or in another term, back in front of
    pending (a leader asks again only what it asked in another term); a read whose deadline
    passed is not asked again, and a late answer to a request asked again serves nothing."""
    w = Waiters(write_timeout_s=30, read_timeout_s=5)
    answers: Answers = []
    a, b, c, d, e = (Waiter(get(k), recorder(answers), 10.0, "the read MAP_GET")
                     for k in "abcde")
    w.ask(b"old term", 1, 100, [a])
    w.ask(b"lost", 2, 100, [b, c])
    w.ask(b"recent", 2, 105, [d])
    w.pending_reads.append(e)  # arrived since: asked after the older reads
    w.ask_again(term=2, tick=109, patience=10)
    assert set(w.asked) == {b"lost", b"recent"} and w.pending_reads == [a, e]
    w.pending_reads.clear()
    c.fail(E.Timeout("its deadline passed"))
    w.ask_again(term=2, tick=110, patience=10)
    assert set(w.asked) == {b"recent"} and w.pending_reads == [b]
    w.read_state(b"lost", 3)  # answered after all, too late: nobody waits on that context
    assert not w.ready
    w.pending_reads.clear()
    w.ask_again(term=2, tick=1_000, patience=None)  # a leader's reads wait in its core
    assert set(w.asked) == {b"recent"} and not w.pending_reads
    w.read_state(b"recent", 3)
    assert w.ready == [(3, [d])] and not w.asked


async def test_waiters_left_when_the_driver_stops_hear_their_outcome_is_unknown() -> None:
    fs = FaultFS(3)
    log = open_log(fs, RaftSettings(tick_ms=10, proposal_timeout_s=30))
    with trio.fail_after(5):  # a driver waiting for disk space can still be stopped
        await _stop_while_full(log, fs)


async def _stop_while_full(log: RaftDriver, fs: FaultFS) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        fs.capacity = fs.used_bytes()
        pending: Answers = []
        log.submit(put("b", b"x" * 100), read=False,
                   on_done=recorder(pending))
        while not log.disk_full:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()  # the node is torn down with the write still unsaved
    # It was proposed (it has an index; the leader may have sent it already): unknown outcome.
    assert len(pending) == 1 and isinstance(pending[0][1], E.Timeout), pending


async def test_a_failing_callback_does_not_stop_the_driver(
        caplog: pytest.LogCaptureFixture) -> None:
    log = open_log(FaultFS(4), RaftSettings(tick_ms=10))

    def broken(out: Outcome | None, err: E.LoomError | None) -> None:
        raise RuntimeError("bug in a caller")

    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.submit(put("a"), read=False, on_done=broken)
        after: Answers = []
        log.submit(put("b"), read=False, on_done=recorder(after))
        with trio.fail_after(5):
            while not after:
                await trio.sleep(0.01)
        assert after[0][1] is None
        assert "error in the completion of the write MAP_PUT" in caplog.text
        log.stop()


def test_admin_requests_are_typed_and_checked_in_the_callers_task() -> None:
    assert parse_admin("add", {"node": "n4", "peer_addr": "h:1"}) == AddMember("n4", "h:1")
    assert parse_admin("transfer", {}) == Transfer(None)
    with pytest.raises(E.BadRequest, match="comes back as a learner"):
        parse_admin("add", {"node": "n4", "peer_addr": "h:1", "learner": False,
                            "readmit": True})
    with pytest.raises(E.BadRequest, match="unknown cluster administration"):
        parse_admin("rename", {"node": "n4"})


async def test_admin_runs_on_the_driver_and_an_added_address_is_replicated_state() -> None:
    log = open_log(FaultFS(6), RaftSettings(tick_ms=10, proposal_timeout_s=0.2))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        with pytest.raises(E.Conflict, match="no other voter"):
            await log.admin("transfer")  # a cluster of one has nobody to hand over to
        out = await log.admin("add", node="n2", peer_addr="127.0.0.1:9")
        assert out["index"] > 0 and log.member_addr("n2") == "127.0.0.1:9"
        assert log.cluster_status()["members"][1] == {
            "id": "n2", "voter": False, "peer_addr": "127.0.0.1:9", "client_addr": None,
            "reachable": None, "match_index": 0, "joining": False}
        assert log.state().members.addrs == {"n2": "127.0.0.1:9"}  # in the snapshot, too
        log.stop()
