"""When the driver snapshots its state, and where the bytes are made.

Policy: snapshot once `snapshot_every` commands were applied since the last snapshot AND the log
written since holds at least half the last snapshot's size, so a large state is snapshotted
proportionally less often (the rule of Redis's AOF rewrite percentage).

A state of FORK_ABOVE_BYTES or more is serialised in a forked child (`snapshotter.py`) while the
driver goes on replicating; when its bytes are back (a `SnapshotBuilt` inbox event) they are
handed to the core and stored. A smaller state, or any state without fork or with
`raft.snapshot_in_child = false`, is serialised on the driver task, which stops the driver for
as long as that takes. One snapshot at a time.

The snapshot is taken at the core's applied index (which counts no-op and membership entries
beyond the state machine's own), so no entry is skipped on restore.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from loom.node import snapshotter
from loom.node.config import RaftSettings
from loom.raft.core import RaftCore
from loom.raft.types import SnapshotMeta
from loom.state.machine import StateMachine
from loom.storage.aio import AsyncStorage

log = logging.getLogger("loom.raft")

SNAPSHOT_CHUNK = 1 << 20
# Below this estimated state size a snapshot is serialised on the driver task: it takes tens of
# milliseconds (far inside an election timeout), less than forking, copy-on-write faults and
# the pipe would cost. Above it, in a forked child (snapshotter.py).
FORK_ABOVE_BYTES = 16 << 20


def chunks(data: bytes) -> list[bytes]:
    """A snapshot as storage takes it: chunks of SNAPSHOT_CHUNK bytes (one empty one if none)."""
    return [data[i:i + SNAPSHOT_CHUNK] for i in range(0, len(data), SNAPSHOT_CHUNK)] or [b""]


class SnapshotPolicy:
    def __init__(self, node_id: str, settings: RaftSettings, core: RaftCore,
                 storage: AsyncStorage, last_index: int) -> None:
        self.id = node_id
        self.s = settings
        self.core = core
        self._storage = storage
        self.last_index = last_index  # index of the newest snapshot stored or installed
        self._last_bytes = 0  # size of the last snapshot taken here (0: none yet)
        self.log_bytes_since = 0  # command bytes applied since the last snapshot
        self.building_at: int | None = None  # index being serialised in a child process
        self._built: tuple[int, bytes | None] | None = None  # its result, back in the inbox
        self.taken = 0
        self.forked = 0  # of which serialised in a child

    def installed(self, index: int) -> None:
        """A snapshot from the leader replaced the state."""
        self.last_index = index

    def built(self, index: int, blob: bytes | None) -> None:
        """The child's result arrived (stored by the next `maybe`, at the end of the turn)."""
        self._built = (index, blob)

    async def maybe(self, sm: StateMachine, nursery: trio.Nursery | None,
                    post: Callable[[int, bytes | None], Awaitable[None]]) -> None:
        """Store a built snapshot, or start one if the policy says so. `post` hands a forked
        child's result back to the driver's inbox."""
        if self._built is not None:
            index, blob = self._built
            self._built = None
            self.building_at = None
            if blob is not None:
                await self._store(index, blob)
            else:
                log.warning("%s: building the snapshot at index %d failed; trying again later",
                            self.id, index)
            return
        if self.building_at is not None:
            return  # one at a time
        if sm.applied_index - self.last_index < self.s.snapshot_every:
            return
        if self.log_bytes_since < self._last_bytes // 2:
            return
        index = self.core.log.applied
        self.log_bytes_since = 0
        if (self.s.snapshot_in_child and snapshotter.CAN_FORK and nursery is not None
                and sm.core.total_bytes >= FORK_ABOVE_BYTES):
            child = snapshotter.start(sm.snapshot)  # the state as of `index`, now
            self.building_at = index
            self.forked += 1
            nursery.start_soon(self._collect, child, index, post)
            return
        await self._store(index, sm.snapshot())

    @staticmethod
    async def _collect(child: snapshotter.Child, index: int,
                       post: Callable[[int, bytes | None], Awaitable[None]]) -> None:
        await post(index, await child.result())

    async def _store(self, index: int, blob: bytes) -> None:
        if index <= self.core.snapshot.meta.index or self.core.log.term(index) is None:
            # A newer snapshot (installed from the leader, say) replaced the log meanwhile.
            log.info("%s: snapshot at index %d is already superseded; dropped", self.id, index)
            return
        meta: SnapshotMeta = self.core.snapshot_taken(index, blob)
        await self._storage.save_snapshot(meta, chunks(blob))
        self.last_index = meta.index
        self._last_bytes = len(blob)
        self.taken += 1
        log.info("%s: snapshot at index %d (%d bytes)", self.id, meta.index, len(blob))
