"""A thin trio adapter: runs `Storage` calls in a worker thread, one at a time.

The event loop keeps running while a call (and its fsync) is in progress. A call is never
abandoned on cancellation: the caller waits for the thread to finish, so the outcome of a
sync is always known before anything that depends on it happens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import trio

from loom.raft.types import Entry, HardState, SnapshotMeta
from loom.storage.storage import Storage


class AsyncStorage:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._limiter = trio.CapacityLimiter(1)

    async def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], must_sync: bool
    ) -> None:
        await trio.to_thread.run_sync(
            self.storage.save, hard_state, entries, must_sync, limiter=self._limiter
        )

    async def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        await trio.to_thread.run_sync(
            self.storage.save_snapshot, meta, chunks, limiter=self._limiter
        )

    async def compact(self, up_to_index: int) -> int:
        return await trio.to_thread.run_sync(
            self.storage.compact, up_to_index, limiter=self._limiter
        )

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.storage.close, limiter=self._limiter)
