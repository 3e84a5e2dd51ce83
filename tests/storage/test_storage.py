"""Storage on the real file system: round trips, Raft overwrite rules, snapshots, limits."""

from __future__ import annotations

import os
import stat

import pytest
import trio

from loom.raft.types import ConfState, HardState, SnapshotMeta
from loom.storage import (
    DataDirLockedError,
    Storage,
    StorageError,
)
from loom.storage.aio import AsyncStorage
from loom.storage.fs import OSFileSystem
from loom.storage.recovery import recover_dir

from .conftest import entries, entry, small_options


def reopen(data_dir: str, **kw: object):  # type: ignore[no-untyped-def]
    s, rec = Storage.open(data_dir, small_options(**kw))
    return s, rec


def test_fresh_directory_is_private_and_locked(data_dir: str) -> None:
    s, rec = reopen(data_dir)
    assert rec.hard_state == HardState() and rec.snapshot is None and rec.entries == []
    s.save(HardState(1, "n1", 0), entries(1, 3), must_sync=True)
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    for root, dirs, files in os.walk(data_dir):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o600, f
    with pytest.raises(DataDirLockedError):
        Storage.open(data_dir, small_options())
    s.close()
    s2, _ = reopen(data_dir)  # the lock is released by close
    s2.close()


def test_roundtrip_across_segments(data_dir: str) -> None:
    s, _ = reopen(data_dir)
    written = []
    for b in range(40):
        batch = entries(b * 25 + 1, 25, size=200)
        written += batch
        s.save(HardState(1, "n2", b * 25), batch, must_sync=True)
    assert s.segment_count > 3
    s.close()
    s, rec = reopen(data_dir)
    assert rec.entries == written
    assert rec.hard_state == HardState(1, "n2", 975)
    assert rec.torn_bytes == 0
    s.close()


def test_conflicting_suffix_is_replaced_and_survives_restart(data_dir: str) -> None:
    s, _ = reopen(data_dir)
    s.save(HardState(1, None, 5), entries(1, 50, term=1), must_sync=True)
    s.save(HardState(2, "n3", 5), entries(20, 5, term=2), must_sync=True)  # truncates 20..50
    s.close()
    s, rec = reopen(data_dir)
    assert [(e.index, e.term) for e in rec.entries] == [(i, 1) for i in range(1, 20)] + [
        (i, 2) for i in range(20, 25)
    ]
    assert rec.entries[-1] == entries(24, 1, term=2)[0]
    assert rec.hard_state == HardState(2, "n3", 5)
    s.close()


def test_invalid_saves_are_refused(data_dir: str) -> None:
    s, _ = reopen(data_dir)
    s.save(HardState(1, None, 10), entries(1, 20), must_sync=True)
    with pytest.raises(ValueError, match="start at"):
        s.save(None, entries(30, 1), must_sync=True)  # gap
    with pytest.raises(ValueError, match="committed"):
        s.save(None, entries(5, 1, term=2), must_sync=True)  # below commit
    with pytest.raises(ValueError, match="term"):
        s.save(None, entries(21, 1, term=0), must_sync=True)
    with pytest.raises(ValueError, match="max_record_size"):
        s.save(None, entries(21, 1, size=9000), must_sync=True)
    with pytest.raises(ValueError, match="goes back"):
        s.save(HardState(0, None, 0), [], must_sync=True)
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.save(None, entries(21, 1), must_sync=True)


def test_snapshot_install_compacts_and_retains(data_dir: str) -> None:
    s, _ = reopen(data_dir, snapshots_to_retain=2)
    for b in range(20):
        s.save(HardState(1, "n1", b * 50 + 50), entries(b * 50 + 1, 50, size=200), True)
    before = s.segment_count
    conf = ConfState(("n1", "n2", "n3"), ("n4",))
    for i, idx in enumerate((300, 600, 900)):
        s.save_snapshot(SnapshotMeta(idx, 1, conf), [bytes([i]) * 10_000, b"tail"])
    assert s.segment_count < before
    assert sorted(os.listdir(os.path.join(data_dir, "snap"))) == [
        f"{600:016x}-{1:016x}.snap",
        f"{900:016x}-{1:016x}.snap",
    ]
    s.close()
    s, rec = reopen(data_dir)
    assert rec.snapshot == SnapshotMeta(900, 1, conf)
    assert [e.index for e in rec.entries] == list(range(901, 1001))
    assert rec.retained and rec.retained[-1].index == 900
    assert len(rec.retained) >= 20  # the configured trailing entries
    reader = s.load_snapshot()
    assert reader is not None
    assert b"".join(reader.chunks()) == b"\x02" * 10_000 + b"tail"
    s.close()
    # A node's start: the covered entries are neither returned nor held while replaying.
    res = recover_dir(OSFileSystem(), data_dir, keyring=None, max_record_size=8 * 1024,
                      keep_records=False, keep_covered=False)
    covered = [e for e in res.replay.entries if e.index <= 900]
    assert covered and all(e.data == b"" for e in covered)
    assert all(e == entry(e.index, size=200) for e in res.replay.entries if e.index > 900)
    s, rec = Storage.open(data_dir, small_options(), keep_retained=False)
    assert rec.retained == []
    assert rec.entries == entries(901, 100, size=200)
    s.close()


def test_snapshot_beyond_the_log_resets_it(data_dir: str) -> None:
    """A follower installing a leader's snapshot past its log: the log restarts after it."""
    s, _ = reopen(data_dir)
    s.save(HardState(1, None, 10), entries(1, 30), True)
    s.save_snapshot(SnapshotMeta(500, 3, ConfState(("a",))), [b"state"])
    s.save(HardState(3, "a", 500), entries(501, 10, term=3), True)
    s.close()
    s, rec = reopen(data_dir)
    assert rec.snapshot is not None and rec.snapshot.index == 500
    assert [e.index for e in rec.entries] == list(range(501, 511))
    assert rec.retained == []
    s.close()


def test_snapshot_file_without_wal_mark_is_honoured(data_dir: str) -> None:
    """Crash between installing the snapshot file and syncing its WAL mark."""
    s, _ = reopen(data_dir, auto_compact=False)
    s.save(HardState(1, None, 10), entries(1, 30), True)
    s.save_snapshot(SnapshotMeta(500, 3, ConfState(("a",))), [b"state"])
    s.close()
    # Drop the mark: rewrite the newest segment without its last record.
    wal = os.path.join(data_dir, "wal")
    newest = sorted(os.listdir(wal))[-1]
    path = os.path.join(wal, newest)
    with open(path, "r+b") as f:
        data = f.read()
        f.truncate(data.rindex(b"\x04\x00\x00\x00") - 4)  # the mark's header starts there
    s, rec = reopen(data_dir)
    assert rec.snapshot is not None and rec.entries == []
    s.save(HardState(3, None, 500), entries(501, 3, term=3), True)
    s.close()
    s, rec = reopen(data_dir)
    assert [e.index for e in rec.entries] == [501, 502, 503]
    s.close()


def test_unsynced_tail_is_synced_by_close(data_dir: str) -> None:
    s, _ = reopen(data_dir)
    s.save(None, entries(1, 10), must_sync=False)
    s.close()
    s, rec = reopen(data_dir)
    assert len(rec.entries) == 10
    s.close()


def test_options_are_bounded() -> None:
    with pytest.raises(ValueError, match="segment_size"):
        Storage.open("/nonexistent-never-created", small_options(segment_size=1024))
    with pytest.raises(ValueError, match="max_record_size"):
        small_options(max_record_size=64 * 1024).validate()


async def test_async_adapter(data_dir: str) -> None:
    s, _ = reopen(data_dir)
    a = AsyncStorage(s)
    await a.save(HardState(1, "n1", 0), entries(1, 5), True)
    await a.save_snapshot(SnapshotMeta(5, 1), [b"x"])
    assert await a.compact(5) == 0
    await a.close()
    s, rec = reopen(data_dir)
    assert rec.snapshot is not None and rec.snapshot.index == 5
    s.close()


def test_snapshot_keeps_removed_ids_across_restart(data_dir: str) -> None:
    """Removed node ids travel in the snapshot's membership, so 'a removed id stays refused'
    holds after the log that removed them is compacted away."""
    s, _ = reopen(data_dir)
    s.save(HardState(2, "n1", 40), entries(1, 40), True)
    conf = ConfState(("n1", "n3", "n5"), ("n6",), (), ("n2", "n4"))
    s.save_snapshot(SnapshotMeta(40, 2, conf), [b"state"])
    s.close()
    s, rec = reopen(data_dir)
    assert rec.snapshot == SnapshotMeta(40, 2, conf)
    reader = s.load_snapshot()
    assert reader is not None and reader.meta.conf.removed == ("n2", "n4")
    s.close()


def test_snapshot_membership_without_removed_ids_decodes() -> None:
    from loom.storage.snapshot import _conf_from_json

    assert _conf_from_json(b'{"voters": ["a"], "learners": [], "voters_outgoing": []}') == (
        ConfState(("a",))
    )
    with pytest.raises(ValueError, match="removed"):
        _conf_from_json(b'{"voters": ["a"], "removed": [1]}')


async def test_worker_thread_runs_calls_in_order_and_returns_results_and_errors() -> None:
    from loom.storage.aio import WorkerThread

    w = WorkerThread("test-worker")
    seen: list[int] = []

    def work(i: int) -> int:
        seen.append(i)
        return i * 2

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(w.run_sync, work, i)
    assert sorted(seen) == list(range(20)) and w.calls == 20
    assert await w.run_sync(work, 21) == 42
    with pytest.raises(ZeroDivisionError):
        await w.run_sync(lambda: 1 // 0)
    assert await w.run_sync(work, 5) == 10  # an exception does not stop the thread


async def test_worker_thread_call_is_not_abandoned_when_cancelled() -> None:
    import threading

    from loom.storage.aio import WorkerThread

    w = WorkerThread("test-worker")
    release = threading.Event()
    done: list[bool] = []

    def slow() -> None:
        release.wait(10)
        done.append(True)

    with trio.move_on_after(0.05) as cs:
        async with trio.open_nursery() as n:
            n.start_soon(trio.to_thread.run_sync, lambda: (__import__("time").sleep(0.2),
                                                           release.set()))
            await w.run_sync(slow)
            assert done == [True]  # cancelled at 0.05 s, it still waited for the call
            await trio.sleep(1)  # the cancellation is seen at the next checkpoint
    assert cs.cancelled_caught and done == [True]


async def test_worker_thread_exits_when_idle_and_restarts(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import threading

    from loom.storage import aio

    monkeypatch.setattr(aio, "IDLE_EXIT_S", 0.05)
    w = aio.WorkerThread("test-idle-worker")
    assert await w.run_sync(threading.current_thread) is not threading.current_thread()
    for _ in range(200):
        if not any(t.name == "test-idle-worker" for t in threading.enumerate()):
            break
        await trio.sleep(0.01)
    assert not any(t.name == "test-idle-worker" for t in threading.enumerate())
    assert await w.run_sync(int, "7") == 7  # started again on demand
