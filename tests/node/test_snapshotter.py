"""Snapshots made in a forked child: the bytes come back whole, a failure is None, a cancelled
wait leaves no child behind; the driver's child writes the snapshot file itself (the driver
gets only its name and size) and a restart recovers it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from loom.node import snapshots, snapshotter
from loom.node.config import RaftSettings
from loom.state.command import Command
from loom.storage.faultfs import FaultFS
from loom.storage.fs import FileSystem, OSFileSystem
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
        fork_above: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A state this small is normally serialised on the driver; 0 makes every state fork. A
    # child writes the file itself, so it needs the real file system.
    monkeypatch.setattr(snapshots, "FORK_ABOVE_BYTES", fork_above)
    reports: list[bytes | None] = []
    built = snapshots.SnapshotPolicy.built
    monkeypatch.setattr(snapshots.SnapshotPolicy, "built",
                        lambda self, i, r: (reports.append(r), built(self, i, r))[1])
    fs: FileSystem = OSFileSystem() if fork_above == 0 else FaultFS(5)
    data = str(tmp_path / "data") if fork_above == 0 else "/data"
    if fork_above == 0:
        fs.mkdir(data)
    log = open_log(fs, RaftSettings(tick_ms=10, snapshot_every=20), data)
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
        # what came back from a child is a report (a file name and a size), never the bytes
        assert all(r is not None and len(r) < 200 for r in reports), reports
        assert len(reports) == st.snapshots_forked
        src = log.core._snap_src  # the core keeps no bytes: it reads the stored file
        assert isinstance(src, snapshots.FileSource)
        assert src.read(0, src.size) == b"".join(log._storage.storage.load_snapshot().chunks())
        log.stop()
    log._storage.storage.close()
    if fork_above == 0:  # the child's temp file was renamed into place
        assert not [n for n in os.listdir(tmp_path / "data" / "snap") if n.endswith(".tmp")]
    again = open_log(fs, RaftSettings(tick_ms=10, snapshot_every=20), data)
    assert again.core.snapshot_meta.index == snap_index  # recovered from the stored snapshot
    assert again.state().applied_index > 0  # the state came from it, before any replay
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)  # replays the log behind the snapshot
        for i in range(60):
            got = again.state().read(Command("MAP_GET", {"name": "m", "key": f"k{i}"}, 1_000))
            assert got.value == b"v%d" % i, (i, got)
        again.stop()
