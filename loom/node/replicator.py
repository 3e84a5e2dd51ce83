"""The seam between the request path and the log: `propose` for writes, `read` for reads.

The dispatcher only ever calls this interface, so consensus plugs in here without reshaping
the request path. `LocalLog` is the single-node log: one driver task (the only writer of state)
takes every proposal queued since its last turn as one batch, makes the batch durable (one
sync for the whole batch: group commit, when a `persist` function is configured), applies it in
order and wakes the callers and any waiters on the structures it changed.

Backpressure: proposals wait in a bounded buffer; when it is full `propose` answers BUSY at once
instead of queueing without bound (SECURITY-CATALOGUE G4).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from loom.raft.types import Entry
from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine
from loom.wire.errors import Busy, Unavailable

StructureId = tuple[str, str]


class Replicator(Protocol):
    async def propose(self, cmd: Command) -> Outcome: ...
    async def read(self, cmd: Command) -> Outcome: ...
    def state(self) -> StateMachine: ...
    def changed_event(self, structure: StructureId) -> trio.Event: ...
    def statistics(self) -> dict[str, Any]: ...


class _Pending:
    __slots__ = ("cmd", "done", "outcome")

    def __init__(self, cmd: Command) -> None:
        self.cmd = cmd
        self.done = trio.Event()
        self.outcome: Outcome | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    index: int
    cmd: Command
    outcome: Outcome


Persist = Callable[[list[Entry]], Awaitable[None]]


class LocalLog:
    def __init__(
        self, sm: StateMachine, *, max_pending: int, persist: Persist | None = None,
        on_applied: Callable[[Applied], None] | None = None,
    ) -> None:
        self._sm = sm
        self._persist = persist
        self._on_applied = on_applied
        self._send, self._recv = trio.open_memory_channel[_Pending](max_pending)
        self._index = sm.applied_index
        self._events: dict[StructureId, trio.Event] = {}
        self._running = False
        self.batches = 0
        self.entries = 0

    def state(self) -> StateMachine:
        return self._sm

    @property
    def applied_index(self) -> int:
        return self._index

    async def propose(self, cmd: Command) -> Outcome:
        if not self._running:
            raise Unavailable("the node is not accepting writes (starting or stopping)")
        p = _Pending(cmd)
        try:
            self._send.send_nowait(p)
        except trio.WouldBlock:
            raise Busy("too many writes in flight; retry later", retry_after_ms=50) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Unavailable("the node is stopping") from None
        # Not cancellable once queued from the caller's point of view: the write may still be
        # applied. A caller that times out reports the outcome as indeterminate.
        await p.done.wait()
        assert p.outcome is not None
        return p.outcome

    async def read(self, cmd: Command) -> Outcome:
        # One node is its own majority: everything applied is committed, reads are linearizable.
        return self._sm.read(cmd)

    def changed_event(self, structure: StructureId) -> trio.Event:
        ev = self._events.get(structure)
        if ev is None:
            ev = self._events[structure] = trio.Event()
        return ev

    def statistics(self) -> dict[str, Any]:
        st = self._send.statistics()
        return {"applied_index": self._index, "pending": st.current_buffer_used,
                "batches": self.batches, "entries": self.entries,
                "entries_per_batch": round(self.entries / self.batches, 2)
                if self.batches else 0.0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The driver: the only writer of state."""
        self._running = True
        task_status.started()
        try:
            async with self._recv:
                async for first in self._recv:
                    batch = [first]
                    while True:  # everything queued right now joins this batch
                        try:
                            batch.append(self._recv.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await self._commit(batch)
        finally:
            self._running = False

    async def _commit(self, batch: list[_Pending]) -> None:
        first = self._index + 1
        entries = [Entry(term=1, index=first + i, data=p.cmd.encode())
                   for i, p in enumerate(batch)]
        if self._persist is not None:
            # Durable before anything is applied or acknowledged. Shielded: a half-persisted
            # batch must not be abandoned by a cancellation.
            with trio.CancelScope(shield=True):
                await self._persist(entries)
        self.batches += 1
        self.entries += len(batch)
        for i, p in enumerate(batch):
            self._index = first + i
            p.outcome = self._sm.apply(p.cmd, self._index)
            if not p.outcome.wait:
                # Everything the apply changed, including side effects (an expired session
                # frees locks and permits on structures the command never named).
                for s in self._sm.changed_structures:
                    ev = self._events.pop(s, None)
                    if ev is not None:
                        ev.set()
            if self._on_applied is not None:
                self._on_applied(Applied(self._index, p.cmd, p.outcome))
            p.done.set()

    def stop(self) -> None:
        """Refuse new proposals; the driver finishes the queued ones and returns."""
        self._running = False
        self._send.close()


def remaining_ms(deadline: float) -> int:
    if deadline == math.inf:
        return 2**31
    return max(0, int((deadline - trio.current_time()) * 1000))
