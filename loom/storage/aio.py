"""A thin trio adapter: runs `Storage` calls in a worker thread, one at a time, in call order.

The event loop keeps running while a call (and its fsync) is in progress. A call is never
abandoned on cancellation: the caller waits for the thread to finish, so the outcome of a
sync is always known before anything that depends on it happens.

The thread is our own rather than `trio.to_thread`'s: a write waits on one hop per fsync, and
a plain thread fed by a queue costs about 100 µs of CPU per hop here against about 165 µs for
`trio.to_thread.run_sync` (bench/storage_bench.py prints both), which is a tenth of what a
one-client write costs a follower. It exits after `IDLE_EXIT_S` without work and is started
again by the next call, so nothing has to stop it.

Where a save runs (`AsyncStorage.save`, the one place that decides): a save without a sync of
at most 64 entries is one buffered write, on the event loop. A synced save of at most
`inline_sync_entries` entries also runs on the event loop, while the recent syncs were fast (a
moving average under `inline_sync_below_s`): the hop costs more than the sync then. The loop
is blocked for that sync, so a disk that turns slow sends the next saves back to the thread
(the average includes every synced save, wherever it ran). Either way the call is the same
`Storage.save` and returns only once durable.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import outcome
import trio

from loom.raft.types import Entry, HardState, SnapshotMeta
from loom.storage.storage import Storage

T = TypeVar("T")
IDLE_EXIT_S = 10.0

_Job = tuple[Callable[[], Any], trio.lowlevel.Task, trio.lowlevel.TrioToken]


class WorkerThread:
    """One OS thread running blocking calls for trio tasks, strictly one after another."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards `_running` against the idle exit
        self._running = False
        self.calls = 0

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the worker thread; its result or exception. Not abandoned when
        cancelled: the caller waits for the call to end, gets its outcome, and sees the
        cancellation at its next checkpoint (as `trio.to_thread.run_sync` does by default)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        job = (functools.partial(fn, *args), trio.lowlevel.current_task(),
               trio.lowlevel.current_trio_token())
        with self._lock:
            self._jobs.put(job)
            if not self._running:
                self._running = True
                threading.Thread(target=self._main, name=self.name, daemon=True).start()
        self.calls += 1
        # The worker reschedules us with the call's outcome, which this await unwraps.
        result: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def _main(self) -> None:
        while True:
            try:
                fn, task, token = self._jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():  # a job put under the lock is never stranded
                        self._running = False
                        return
                continue
            result = outcome.capture(fn)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # the caller's run is gone; nobody waits
                pass


UNSYNCED_INLINE_ENTRIES = 64  # a save without a sync of at most this many: on the loop
SYNC_AVERAGE_WEIGHT = 1 / 8  # of the newest synced save in the moving average


class AsyncStorage:
    def __init__(self, storage: Storage, *, inline_sync_entries: int = 0,
                 inline_sync_below_s: float = 0.001) -> None:
        self.storage = storage
        self._worker = WorkerThread("loom-storage")
        self._inline_entries = inline_sync_entries
        self._inline_below = inline_sync_below_s
        self.sync_average_s = 0.0  # moving average of synced saves, hop included if any
        self.inline_syncs = 0  # synced saves run on the event loop

    async def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], must_sync: bool
    ) -> None:
        """`Storage.save`, where it costs least (the module docstring); not abandoned when
        cancelled, like every call here."""
        if not must_sync and len(entries) <= UNSYNCED_INLINE_ENTRIES:
            self.storage.save(hard_state, entries, False)  # one small buffered write
            return
        t0 = time.perf_counter()
        if (must_sync and len(entries) <= self._inline_entries
                and self.sync_average_s < self._inline_below):
            self.inline_syncs += 1
            self.storage.save(hard_state, entries, True)
        else:
            await self._worker.run_sync(self.storage.save, hard_state, entries, must_sync)
        if must_sync:
            took = time.perf_counter() - t0
            self.sync_average_s += (took - self.sync_average_s) * SYNC_AVERAGE_WEIGHT

    async def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        await self._worker.run_sync(self.storage.save_snapshot, meta, chunks)

    async def install_snapshot(self, meta: SnapshotMeta, tmp: str) -> None:
        await self._worker.run_sync(self.storage.install_snapshot, meta, tmp)

    async def discard_snapshot_tmp(self, tmp: str) -> None:
        await self._worker.run_sync(self.storage.discard_snapshot_tmp, tmp)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Any blocking storage work (a received snapshot's writer, say) in the same worker
        thread, in order with the calls above."""
        return await self._worker.run_sync(fn, *args)

    async def compact(self, up_to_index: int) -> int:
        return await self._worker.run_sync(self.storage.compact, up_to_index)

    async def close(self) -> None:
        await self._worker.run_sync(self.storage.close)
