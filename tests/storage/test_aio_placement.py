"""Where AsyncStorage runs a save: small synced saves on the event loop while syncs are fast,
the rest on its thread; a disk that turns slow sends them back to the thread."""

from __future__ import annotations

import time

from loom.raft.types import HardState
from loom.storage import Storage
from loom.storage.aio import AsyncStorage
from loom.storage.fs import File, OSFileSystem

from .conftest import entries, small_options


class SlowSyncFS(OSFileSystem):
    """The real file system whose file syncs take `delay_s` longer (a slow disk) once armed."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File:
        f = super().open(path, create=create, exclusive=exclusive)
        fs = self

        class Slow(type(f)):  # type: ignore[misc]
            def sync(self) -> None:
                time.sleep(fs.delay_s)
                super().sync()

        f.__class__ = Slow
        return f


async def test_small_synced_saves_run_inline_until_the_disk_turns_slow(data_dir: str) -> None:
    fs = SlowSyncFS()
    s, _ = Storage.open(data_dir, small_options(fs=fs))
    a = AsyncStorage(s, inline_sync_entries=4, inline_sync_below_s=0.003)
    await a.save(HardState(1, "n1", 0), entries(1, 4), True)
    assert (a.inline_syncs, a._worker.calls) == (1, 0)
    await a.save(HardState(1, "n1", 0), entries(5, 5), True)  # more entries: the thread
    assert (a.inline_syncs, a._worker.calls) == (1, 1)
    await a.save(HardState(1, "n1", 9), [], False)  # no sync: a buffered write, inline
    assert a._worker.calls == 1

    fs.delay_s = 0.05  # the disk turns slow: after a few saves the average says so
    i = 10
    while a.sync_average_s < 0.003:
        await a.save(None, entries(i, 1), True)
        i += 1
    inline, calls = a.inline_syncs, a._worker.calls
    await a.save(None, entries(i, 1), True)
    assert (a.inline_syncs, a._worker.calls) == (inline, calls + 1)  # back on the thread
    await a.close()
    s, rec = Storage.open(data_dir, small_options())
    assert [e.index for e in rec.entries] == list(range(1, i + 1))  # every save is durable
    s.close()


async def test_inline_syncs_can_be_turned_off(data_dir: str) -> None:
    s, _ = Storage.open(data_dir, small_options())
    a = AsyncStorage(s, inline_sync_entries=0)
    await a.save(HardState(1, "n1", 0), entries(1, 1), True)
    assert (a.inline_syncs, a._worker.calls) == (0, 1)
    await a.close()
