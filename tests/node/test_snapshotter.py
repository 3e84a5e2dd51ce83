"""Snapshots serialised in a forked child: the bytes come back whole, a failure is None, a
cancelled wait leaves no child behind, and the driver stores them as a snapshot that a restart
recovers."""

from __future__ import annotations

import os

import pytest
import trio

from loom.node import snapshots, snapshotter
from loom.node.config import RaftSettings
from loom.state.command import Command
from loom.storage.faultfs import FaultFS
from tests.node.test_raftdriver import Answers, open_log, put, recorder

pytestmark = pytest.mark.skipif(not snapshotter.CAN_FORK, reason="needs fork()")


async def test_the_child_streams_back_exactly_what_it_serialised() -> None:
    big = os.urandom(3_000_000)  # larger than a pipe buffer many times over
    child = snapshotter.start(lambda: big)
    assert await child.result() == big


async def test_a_failing_child_yields_none() -> None:
    def boom() -> bytes:
        raise RuntimeError("serialisation failed")

    assert await snapshotter.start(boom).result() is None


async def test_cancelling_the_wait_kills_the_child() -> None:
    def forever() -> bytes:
        while True:
            pass

    child = snapshotter.start(forever)
    with trio.move_on_after(0.2):
        await child.result()
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # already reaped: it no longer exists


@pytest.mark.parametrize("fork_above", [0, 1 << 40], ids=["forked", "on-the-driver"])
async def test_the_driver_stores_a_snapshot_and_a_restart_recovers_it(
        fork_above: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A state this small is normally serialised on the driver; 0 makes every state fork.
    monkeypatch.setattr(snapshots, "FORK_ABOVE_BYTES", fork_above)
    fs = FaultFS(5)
    log = open_log(fs, RaftSettings(tick_ms=10, snapshot_every=20))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        answers: list[Answers] = [[] for _ in range(60)]
        for i, ans in enumerate(answers):
            log.submit(put(f"k{i}", b"v%d" % i), read=False, on_done=recorder(ans))
            await trio.sleep(0)
        with trio.fail_after(10):  # every write answered, a snapshot stored, none building
            while (log.snapshots.taken < 1 or not all(answers)
                   or log.statistics().snapshot_building_at is not None):
                await trio.sleep(0.01)
        snap_index = log.core.snapshot_meta.index
        assert snap_index >= 20
        st = log.statistics()
        assert st.snapshot_building_at is None  # nothing left running
        assert (st.snapshots_forked > 0) == (fork_above == 0), st
        src = log.core._snap_src  # the core keeps no bytes: it reads the stored file
        assert isinstance(src, snapshots.FileSource)
        assert src.read(0, src.size) == b"".join(log._storage.storage.load_snapshot().chunks())
        log.stop()
    log._storage.storage.close()
    again = open_log(fs, RaftSettings(tick_ms=10, snapshot_every=20))
    assert again.core.snapshot_meta.index == snap_index  # recovered from the stored snapshot
    assert again.state().applied_index > 0  # the state came from it, before any replay
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)  # replays the log behind the snapshot
        for i in range(60):
            got = again.state().read(Command("MAP_GET", {"name": "m", "key": f"k{i}"}, 1_000))
            assert got.value == b"v%d" % i, (i, got)
        again.stop()
